"""The review session: one Qt-free, evented state behind the docks, the CLI and scripts."""

from .entries import (
    AgreementRow,
    ModelEntry,
    ResultKey,
    SlideEntry,
    SlideTissue,
    WhatIf,
    layer_name,
)
from .review import ReviewSession
from .store import files_dir

__all__ = ["ReviewSession", "SlideEntry", "ModelEntry", "ResultKey", "AgreementRow", "WhatIf",
           "SlideTissue", "layer_name", "files_dir"]
