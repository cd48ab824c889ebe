"""The ``napari-mil`` command line."""
