"""One exception hierarchy for everything a user can get wrong.

Every message says what is wrong and what to do about it. The widgets show these as
notifications and keep the session alive; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "NapariMilError",
    "SlideError",
    "SlideNotFoundError",
    "UnsupportedSlideError",
    "CorruptSlideError",
    "MissingMppError",
    "TissueError",
    "FeatureError",
    "ExtractorError",
    "CheckpointError",
    "ModelError",
    "AnnotationError",
    "ResultError",
    "ExportError",
    "ConfigError",
    "CancelledError",
    "first_line",
]


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type name
    when the message is empty: the part of a library's error worth quoting in ours."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line


class NapariMilError(Exception):
    """Base class of every error napari-mil raises on purpose."""


class ConfigError(NapariMilError, ValueError):
    """A parameter or configuration value is invalid."""


class SlideError(NapariMilError):
    """A slide cannot be opened or read."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class UnsupportedSlideError(SlideError):
    """The file is not a whole-slide image any installed backend can read."""


class CorruptSlideError(SlideError):
    """The file looks like a slide but its data is damaged (truncated, bad tiles)."""


class MissingMppError(SlideError):
    """The slide does not record its pixel size and none was given."""


class TissueError(NapariMilError):
    """Tissue detection or tiling found nothing usable."""


class FeatureError(NapariMilError):
    """A feature file or cache does not fit the slide, grid or extractor."""


class ExtractorError(NapariMilError):
    """A patch embedder cannot be created, loaded or does not match its card."""


class CheckpointError(NapariMilError):
    """A model checkpoint cannot be loaded safely or does not match its card."""


class ModelError(NapariMilError):
    """A model was given inputs it cannot process."""


class AnnotationError(NapariMilError):
    """An annotation file is malformed or unsupported."""


class ResultError(NapariMilError):
    """A saved analysis result is missing, damaged or belongs to another slide."""


class ExportError(NapariMilError):
    """An export cannot be written."""


class CancelledError(NapariMilError):
    """A long-running job was cancelled by the user."""
