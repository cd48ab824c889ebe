"""Importing this module registers every architecture the project ships."""

from __future__ import annotations
