"""Running a model over a slide: the ``run_slide`` generator and ``SlideResult``."""
