"""The bounded queues between the stages of the local engine: waits that end when the run is stopped."""

from __future__ import annotations

import queue
import threading
from typing import Any

POLL_S = 0.1
EMPTY = object()  # what get_nowait gives for an empty queue


class Stopped(Exception):
    """The run is being stopped (an interrupt or an error elsewhere)."""


def get_nowait(q: queue.Queue) -> Any:
    """The next item of ``q``, or EMPTY."""
    try:
        return q.get_nowait()
    except queue.Empty:
        return EMPTY


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """The next item of ``q``, waiting; Stopped once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise Stopped
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue


def put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put ``item`` into ``q``, waiting for room; Stopped once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise Stopped
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue
