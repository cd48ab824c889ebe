"""Qt dock widgets (the only place that imports Qt, magicgui or calls ``viewer.add_*``)."""
