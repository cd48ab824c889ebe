"""``python -m napari_mil`` is the ``napari-mil`` command."""

import sys

from .cli.main import main

sys.exit(main())
