"""Rerun recordings (``--formats rerun``, ``hamer run --rerun``): ``<name>.rrd``, one per input, every frame logged
by :func:`hamer.viewer.log_rerun` (needs the extra ``pip install "hamer[viewer]"``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from ..outputs import Frame
from ..viewer import default_blueprint, import_rerun, log_rerun


class RerunWriter:
    """A Rerun recording file (``.rrd``) of one input, whole or not at all: ``add(frame, img_bgr)`` per frame.

    Use as a context manager: the file appears when the block completes, none when it raises.
    """

    def __init__(self, path: Path, faces: np.ndarray | None = None, application_id: str = "hamer") -> None:
        self.path, self.faces, self.application_id = Path(path), faces, application_id
        self._rec: Any = None

    def __enter__(self) -> RerunWriter:
        rr = import_rerun()
        self._file = atomic_path(self.path)
        tmp = self._file.__enter__()
        self._rec = rr.RecordingStream(self.application_id, recording_id=self.path.stem)
        self._rec.save(os.fspath(tmp), default_blueprint=default_blueprint())
        return self

    def add(self, frame: Frame, img_bgr: np.ndarray | None) -> None:
        log_rerun(frame.result, img_bgr, self.faces, frame=frame.index, time_s=frame.time_s, recording=self._rec)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._rec.flush()
            self._rec.disconnect()
        finally:
            self._file.__exit__(exc_type, exc, tb)
