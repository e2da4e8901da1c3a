"""Atomic file and directory writes: build under a temporary name, rename into place on success.

A failure or Ctrl-C at any point leaves the destination untouched and removes the temporary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest):
    """Yield a temporary path next to ``dest`` (same filesystem); rename it onto ``dest`` on success.

    Works for files and for directory artifacts (e.g. a .mlpackage): whatever the body creates at the
    temporary path is moved into place.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: some writers (coremltools) insist on it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.partial-", suffix=dest.suffix, dir=str(dest.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the body creates it (as a file or as a directory)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        remove(tmp)
        raise


def remove(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
