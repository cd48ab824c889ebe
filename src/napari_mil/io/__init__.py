"""Reading and writing files: slides, annotations, feature files, caches."""

#: file extensions of whole-slide images (lower case); .tif/.tiff may also be plain images
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".vms",
                  ".vmu", ".mrxs", ".qptiff")
