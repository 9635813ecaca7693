"""Start-up noise kept off the console.

TensorFlow 2.21 logs through Abseil before Abseil's logging is initialised, and such lines
go to stderr whatever TF_CPP_MIN_LOG_LEVEL says ("All log messages before
absl::InitializeLog() ...", oneDNN and CUDA notices): a screen of them per process, driver
and every actor. They are written to file descriptor 2 by C++, so only redirecting the
descriptor keeps them off. ``a3c-train --verbose`` sets A3C_RAY_VERBOSE=1 for the driver and
its actors, which leaves stderr alone.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Iterator

VERBOSE_ENV = "A3C_RAY_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


@contextlib.contextmanager
def stderr_captured() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 to a temporary file; yield a function returning what was
    written (complete once the block has ended)."""
    sys.stderr.flush()
    saved = os.dup(2)
    text = ""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")


@contextlib.contextmanager
def quiet_start() -> Iterator[None]:
    """Run the block with fd 2 captured unless verbose; what it wrote is shown if the
    block fails, so an import error still explains itself."""
    if verbose():
        yield
        return
    with contextlib.ExitStack() as stack:
        written = stack.enter_context(stderr_captured())
        try:
            yield
        except BaseException:
            stack.close()  # fd 2 restored and the text complete
            sys.stderr.write(written())
            raise
