"""Keep converter chatter (TensorFlow/absl logs, version warnings, C++ prints) out of the user's terminal.

Conversion toolchains print hundreds of lines to fd 1/2 from C++. We capture them into a temporary
file at the file-descriptor level, and hand the captured text back so errors can quote it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

# Before TensorFlow / absl are imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class Captured:
    text: str = ""


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence Python warnings/logging and redirect fds 1 and 2 to a temp file for the duration."""
    cap = Captured()
    if not enabled or os.environ.get("SQUEEZE_VERBOSE"):
        yield cap
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield cap
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            logging.disable(previous)
            sink.seek(0)
            cap.text = sink.read().decode("utf-8", "replace")
