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
