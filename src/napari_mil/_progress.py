"""Driving the package's progress generators (long work yields progress, returns its result)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["collect", "run_to_end"]


def run_to_end(gen: Generator[Any, None, Any]) -> Any:
    """Drive a progress generator to its end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def collect(gen: Generator[Any, None, Any]) -> tuple[list[Any], Any]:
    """Drive a progress generator to its end; return ``(everything it yielded, its result)``."""
    items: list[Any] = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value
