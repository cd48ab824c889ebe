"""Tissue detection, tile grids per magnification, parent/child links, context windows."""
