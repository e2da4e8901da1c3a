"""Opening the files this package reads with errors that say which problem it is, and what a wrong file is.

What a file *is* comes from the project's shared signature table (squeeze_mobile.file_kinds), so a refusal
can say "X is an MP4/MOV video, not a context pack".
"""

from __future__ import annotations

# open_for_reading and read_utf8_text live in the shared core (SqueezeTime reads label files with them too)
from squeeze_mobile.file_kinds import describe, open_for_reading, read_utf8_text  # noqa: F401

GGUF_MAGIC = b"GGUF"


def kind_of(path) -> str:
    """A short noun phrase for what ``path`` holds ("a GGUF model file", "an MP4/MOV video", ...)."""
    return describe(path) or "a file of unrecognised binary data"
