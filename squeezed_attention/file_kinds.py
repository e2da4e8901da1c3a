"""Opening the files this package reads with errors that say which problem it is, and what a wrong file is.

What a file *is* comes from the project's shared signature table (squeeze_mobile.file_kinds), so a refusal
can say "X is an MP4/MOV video, not a context pack".
"""

from __future__ import annotations

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


def read_utf8_text(path, what: str = "context file", hint: str = "pass a UTF-8 text file with --context") -> str:
    """The text of a user's UTF-8 file (a leading byte-order mark dropped: Windows editors write one, and it is not
    part of the text), or a one-line SqueezeError naming the problem."""
    path = Path(path)
    with open_for_reading(path, what, hint) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SqueezeError(f"{path} is not UTF-8 text; {hint}") from None


def kind_of(path) -> str:
    """A short noun phrase for what ``path`` holds ("a GGUF model file", "an MP4/MOV video", ...)."""
    return describe(path) or "a file of unrecognised binary data"
