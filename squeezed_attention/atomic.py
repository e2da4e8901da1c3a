"""Write files atomically: build under a temporary name in the destination folder, then os.replace."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_file(dest):
    """Yield a temporary file path next to ``dest``; move it onto ``dest`` only if the body succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=str(dest.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(dest, text: str) -> None:
    with atomic_file(dest) as tmp:
        tmp.write_text(text)
