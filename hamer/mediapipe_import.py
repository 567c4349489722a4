"""MediaPipe imported without loading the parts hamer never calls.

``import mediapipe`` runs every task package's ``__init__``: the audio tasks (which load PortAudio through
``sounddevice``) and the vision drawing helpers (which import ``matplotlib.pyplot``). Those two are about three
quarters of its import time (0.45 → 0.11 CPU-s here, after numpy and OpenCV), paid by every ``hamer run`` process and
Ray worker. :func:`import_mediapipe` imports MediaPipe with those modules made lazy (:class:`importlib.util.LazyLoader`,
the standard library's deferred loading): they are in ``sys.modules`` as usual and run their own code, unchanged, the
first time an attribute of theirs is read. Where MediaPipe is already imported, or its layout differs, it is a plain
import. (A lazy module's first attribute read from two threads at once can fail before Python 3.12.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

# MediaPipe modules that hamer never uses, loaded on first use rather than by ``import mediapipe``
DEFERRED = ("mediapipe.tasks.python.audio", "mediapipe.tasks.python.vision.drawing_styles",
            "mediapipe.tasks.python.vision.drawing_utils")


class _Deferring(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`DEFERRED` where the import system would, with their loader made lazy."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def import_mediapipe() -> ModuleType:
    """The ``mediapipe`` package, imported with :data:`DEFERRED` loaded on first use (if this imports it)."""
    finder = _Deferring()
    sys.meta_path.insert(0, finder)
    try:
        import mediapipe
    finally:
        sys.meta_path.remove(finder)
    return mediapipe
