"""Exports: region-of-interest crops, GeoJSON/CSV tile tables, heatmap rasters."""
