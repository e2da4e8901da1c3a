"""Opening the files this package reads with errors that say which problem it is, and what a wrong file is.

What a file *is* comes from the project's shared signature table (squeeze_mobile.file_kinds), so a refusal
can say "X is an MP4/MOV video, not a context pack".
"""

from __future__ import annotations

import codecs
from pathlib import Path

from squeeze_mobile.file_kinds import describe

from .errors import SqueezeError

GGUF_MAGIC = b"GGUF"


def open_for_reading(path, what: str, hint: str):
    """Open ``path`` for binary reading or raise a one-line SqueezeError that says which problem it is
    (missing, a directory, permission denied, other OS error). ``what`` names the expected file, ``hint`` what
    to do instead."""
    path = Path(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SqueezeError(f"{what} not found: {path}; {hint}") from None
    except IsADirectoryError:
        raise SqueezeError(f"{path} is a directory, not a {what}; {hint}") from None
    except PermissionError:
        raise SqueezeError(f"cannot read {path}: permission denied; ask its owner to make it readable "
                           f"(chmod a+r) or {hint}") from None
    except OSError as exc:
        raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None


# Byte-order marks that name an encoding unambiguously (UTF-32 first: its little-endian mark starts with UTF-16's).
# Windows editors save "Unicode" text as UTF-16 with a mark; such a file is read as the text it holds.
_UNICODE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                 (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_utf8_text(path, what: str = "context file", hint: str = "pass a UTF-8 text file with --context") -> str:
    """The text of a user's text file: UTF-8, or UTF-8/16/32 with a byte-order mark (the mark dropped: Windows editors
    write one, and it is not part of the text), or a one-line SqueezeError naming the problem. A file with NUL
    characters is refused: it is binary data, or UTF-16/32 without a mark, which also decodes as UTF-8."""
    path = Path(path)
    with open_for_reading(path, what, hint) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None
    encoding = next((name for bom, name in _UNICODE_BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        label = "UTF-8 text" if encoding.startswith("utf-8") else f"{encoding.upper()} text (as its byte-order mark says)"
        raise SqueezeError(f"{path} is not {label}; {hint}") from None
    if "\0" in text:
        raise SqueezeError(f"{path} contains NUL characters, so it is not plain text (binary data, or UTF-16/32 "
                           f"without a byte-order mark); {hint}")
    return text


def kind_of(path) -> str:
    """A short noun phrase for what ``path`` holds ("a GGUF model file", "an MP4/MOV video", ...)."""
    return describe(path) or "a file of unrecognised binary data"
