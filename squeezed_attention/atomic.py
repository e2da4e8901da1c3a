"""Atomic writes for this package: the project's one mechanism (squeezetime._atomic), under local names."""

from __future__ import annotations

from squeezetime._atomic import atomic_path as atomic_file  # temp name next to dest, renamed on success


def write_text_atomic(dest, text: str) -> None:
    with atomic_file(dest) as tmp:
        tmp.write_text(text)


__all__ = ["atomic_file", "write_text_atomic"]
