"""SIGINT and SIGTERM end a command the same way: an exception in the main thread, so every ``finally`` and
every atomic write cleans up, then one ``error:`` line and exit status 130 (SIGINT) or 143 (SIGTERM).

:func:`sigterm_raises` is installed by the CLI's ``main()``. :class:`DeferredSignals` is for work that runs
inside native code that must not see a Python exception mid-call (converters' C++ callbacks can abort the
process): the first signal only sets a flag that the caller checks between steps; a second one acts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

EXIT_SIGINT = 128 + signal.SIGINT   # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every cleanup path written for Ctrl-C also runs for it."""


def _raise_terminated(signum, frame):
    raise Terminated()


def exit_code(exc: KeyboardInterrupt) -> int:
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def signal_name(exc: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"


@contextlib.contextmanager
def sigterm_raises():
    """While active (main thread only), SIGTERM raises :class:`Terminated` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:   # ignored by whoever started us (trap '' TERM): stays so
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DeferredSignals:
    """Hold the first SIGINT/SIGTERM until :meth:`check` (called between steps); a second one acts at once."""

    def __init__(self, message: str = "stopping after the current step (send it again to stop at once)"):
        self.requested = None  # the signal number received, or None
        self.message = message
        self._previous = {}

    @property
    def pending(self) -> bool:
        return self.requested is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                # a signal the process was started ignoring (a job run with `cmd &` from a script, nohup-like
                # wrappers, trap '' INT) stays ignored: it was not meant to stop this command
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signum
        name = "interrupt" if signum == signal.SIGINT else "SIGTERM"
        print(f"note: {name} received; {self.message}", file=sys.stderr, flush=True)
        for sig in self._previous:   # a second one acts at once (only those this object handles)
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _raise_terminated)

    def check(self) -> None:
        if self.requested == signal.SIGTERM:
            raise Terminated()
        if self.requested is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False


__all__ = ["DeferredSignals", "EXIT_SIGINT", "EXIT_SIGTERM", "Terminated", "exit_code", "signal_name", "sigterm_raises"]
