"""The one exception type users of squeeze-mobile see.

Every failure a user can cause (bad file, bad shape, unknown option, a backend that cannot convert)
raises :class:`SqueezeError` with a one-line message that says what to do. The CLI prints the message
without a traceback and exits non-zero.
"""


class SqueezeError(Exception):
    """A user-facing error with a one-line, actionable message."""

    def __init__(self, message: str):
        # Keep it on one line whatever the caller formatted.
        super().__init__(" ".join(str(message).split()))


def reason_of(exc: BaseException, limit: int = 100) -> str:
    """A library's exception as a short reason to quote inside a SqueezeError (runtimes and parsers put pages of
    context into their messages): one line, at most ``limit`` characters, the type's name when it says nothing."""
    text = " ".join(str(exc).split())
    return (text if len(text) <= limit else text[:limit - 3] + "...") or type(exc).__name__


class SqueezeWarning(UserWarning):
    """Something a user should know that does not stop the work (e.g. a video whose container declares more
    frames than decode). Raised with ``warnings.warn``; the CLI prints each as one ``warning:`` line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def user_path(value, what: str):
    """``value`` (a str, bytes or os.PathLike naming a file or folder) as a ``pathlib.Path``; a one-line SqueezeError
    for what names no path (None, an open file, a number, an empty string: an unset variable would otherwise mean
    the current directory). ``what`` names the argument in the message, e.g. "the output folder"."""
    import os
    from pathlib import Path

    if isinstance(value, (bytes, bytearray)):
        value = os.fsdecode(bytes(value))
    elif isinstance(value, os.PathLike):
        value = os.fspath(value)
        value = os.fsdecode(value) if isinstance(value, bytes) else value
    elif not isinstance(value, str):
        kind = "an open file" if hasattr(value, "read") or hasattr(value, "write") else type(value).__name__
        raise SqueezeError(f"{what} must be a path (str or pathlib.Path); got {kind}")
    if not value.strip():
        raise SqueezeError(f"{what} is empty; give a path")
    return Path(value)
