"""Reading and writing files: slides, annotations, feature files, caches."""
