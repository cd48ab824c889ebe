"""Text read from JSON that can always be written back as UTF-8.

JSON lets a string hold a lone UTF-16 surrogate (``"\\ud800"``); Python keeps it, and writing
the string as UTF-8 later fails (``UnicodeEncodeError`` in the middle of an export). Readers
replace each lone surrogate with U+FFFD (�) as they read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["has_lone_surrogate", "without_lone_surrogates"]


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a code point U+D800–U+DFFF (never valid on its own)."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def without_lone_surrogates(obj: Any) -> Any:
    """``obj`` (JSON data: dicts, lists, strings, numbers) with every lone surrogate in every
    string, keys included, replaced by U+FFFD; other values are returned as they are."""
    if isinstance(obj, str):
        if has_lone_surrogate(obj):
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in obj)
        return obj
    if isinstance(obj, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_lone_surrogates(v) for v in obj]
    return obj
