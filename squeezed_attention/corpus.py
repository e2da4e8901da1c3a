"""Real prose that ships with the OS and Python, for passkey/needle and continuation evaluations.

No repeated filler: texts are the Python licence/history file from the standard library and the licence
texts Debian ships in /usr/share/common-licenses, concatenated paragraph by paragraph.
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

from .errors import SqueezeError

COMMON_LICENSES = Path("/usr/share/common-licenses")
PROSE_FILES = ("GPL-3", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "LGPL-2.1", "Artistic", "CC0-1.0", "GPL-2")


def prose_sources() -> list[Path]:
    paths = [Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"]
    paths += [COMMON_LICENSES / name for name in PROSE_FILES]
    return [p for p in paths if p.is_file()]


def _paragraphs(text: str) -> list[str]:
    """Paragraphs with runs of spaces collapsed (licence files are hard-wrapped and indented)."""
    paras = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.split())
        if len(para) > 1:
            paras.append(para)
    return paras


def prose_paragraphs(rotate: int = 0) -> list[str]:
    """All paragraphs of all sources; ``rotate`` starts at a different source for variety."""
    sources = prose_sources()
    if not sources:
        raise SqueezeError("no prose sources found (Python's LICENSE.txt or /usr/share/common-licenses)")
    sources = sources[rotate % len(sources):] + sources[:rotate % len(sources)]
    paras: list[str] = []
    for path in sources:
        paras += _paragraphs(path.read_text(encoding="utf-8", errors="replace"))
    return paras


def prose_of_tokens(tokenizer, num_tokens: int, rotate: int = 0) -> list[str]:
    """The fewest leading paragraphs whose total is at least ``num_tokens`` tokens (approximately)."""
    out, total = [], 0
    for para in prose_paragraphs(rotate):
        out.append(para)
        total += len(tokenizer.encode(para + "\n\n"))
        if total >= num_tokens:
            return out
    raise SqueezeError(f"the bundled prose has only ~{total} tokens; ask for at most that many")
