"""Native libraries' writes to the process's standard error, routed through logging.

MediaPipe and its LiteRT runtime write dozens of lines (``Sparsity tensors may not yet be fully supported``,
``DestroyAccelerator``, ``Created TensorFlow Lite XNNPACK delegate`` ...) straight to file descriptor 2, which
``GLOG_minloglevel`` and ``TF_CPP_MIN_LOG_LEVEL`` do not stop. :func:`stderr_to_log` points descriptor 2 at a
temporary file around such a call and logs what was written, line by line, at DEBUG.

Descriptor 2 belongs to the whole process: while it is redirected, another thread's writes to standard error are
logged the same way. One redirection runs at a time.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()
_depth = 0


@contextmanager
def stderr_to_log(logger: logging.Logger, prefix: str) -> Iterator[None]:
    """Run the block with descriptor 2 captured; log each captured line as ``"<prefix>: <line>"`` at DEBUG."""
    global _depth
    with _LOCK:
        if _depth:  # already captured by an enclosing block
            yield
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no descriptor 2 (or no sys.stderr): nothing to capture
            yield
            return
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            capture.close()
            for line in text.splitlines():
                if line.strip():
                    logger.debug("%s: %s", prefix, line.rstrip())
