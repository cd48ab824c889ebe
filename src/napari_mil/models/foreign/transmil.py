"""placeholder"""
FORMATS = ()
