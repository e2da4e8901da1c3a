"""Atomic writes for this package: the project's one mechanism (squeeze_mobile.atomic), under local names."""

from __future__ import annotations

from squeeze_mobile.atomic import atomic_path as atomic_file  # temp name next to dest, renamed on success
from squeeze_mobile.atomic import write_text_atomic

__all__ = ["atomic_file", "write_text_atomic"]
