"""Output formats of ``hamer run`` (``--formats``), one writer per format, all behind :func:`open_writers`.

Every writer is a context manager with ``add(frame)``; its files appear (atomically renamed into place) only when
the block completes. ``jsonl`` and ``npz`` are :class:`hamer.outputs.FrameWriter`'s; ``pose`` (pose-format),
``openpose`` (OpenPose JSON), ``obj`` (meshes) and ``rerun`` (a Rerun recording, which also takes each frame's image)
live in the modules of this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import Frame, FrameWriter

FORMATS = ("jsonl", "npz", "pose", "openpose", "obj", "rerun")


def parse_formats(text: str) -> tuple[str, ...]:
    """``"jsonl,npz,pose"`` -> ("jsonl", "npz", "pose"); ValueError naming an unknown one."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format {', '.join(unknown) or repr(text)}; choose from {', '.join(FORMATS)}")
    return names


@dataclass(frozen=True)
class UnitInfo:
    """What the writers of one input need: its output ``name`` in ``out``, the video's ``fps`` (None for images),
    MANO ``faces`` (for obj), a Holistic ``pose_base`` file to upgrade (for pose), ``vertices`` in the NPZ."""

    out: Path
    name: str
    fps: float | None = None
    faces: np.ndarray | None = None
    pose_base: Path | None = None
    vertices: bool = False


def output_paths(formats: Sequence[str], info: UnitInfo) -> list[Path]:
    """The files and folders the writers of ``formats`` write for one input."""
    suffix = {"jsonl": ".jsonl", "npz": ".npz", "pose": ".pose", "openpose": ".openpose", "obj": ".obj",
              "rerun": ".rrd"}
    return [info.out / f"{info.name}{suffix[f]}" for f in formats]


class UnitWriters:
    """The writers of ``formats`` for one input, as one: ``add(frame)`` to each; counts ``frames`` and ``hands``.

    A context manager: every file appears when the block completes, none when it raises.
    """

    def __init__(self, formats: Sequence[str], info: UnitInfo) -> None:
        from .obj import ObjWriter
        from .openpose import OpenPoseWriter
        from .pose import PoseWriter

        paths = dict(zip(formats, output_paths(formats, info), strict=True))
        self.paths = list(paths.values())
        self._writers: list[Any] = []
        if "jsonl" in paths or "npz" in paths:
            self._writers.append(FrameWriter(paths.get("jsonl"), paths.get("npz"), vertices=info.vertices))
        if "pose" in paths:
            self._writers.append(PoseWriter(paths["pose"], info.fps, info.pose_base))
        if "openpose" in paths:
            self._writers.append(OpenPoseWriter(paths["openpose"], info.name))
        if "obj" in paths:
            if info.faces is None:
                raise ValueError("--formats obj needs the MANO triangles, which this ONNX file lacks (exported "
                                 "before they were stored): use --backend torch or export it again")
            self._writers.append(ObjWriter(paths["obj"], info.faces))
        self._image_writers: list[Any] = []
        if "rerun" in paths:
            from .rerun import RerunWriter

            self._image_writers.append(RerunWriter(paths["rerun"], info.faces))
        self.frames = 0
        self.hands = 0

    def __enter__(self) -> UnitWriters:
        self._stack = ExitStack()
        for writer in self._writers + self._image_writers:
            self._stack.enter_context(writer)
        return self

    def add(self, frame: Frame, img_bgr: np.ndarray | None = None) -> None:
        """Write ``frame`` (``img_bgr``: its image, for the writers that log images)."""
        for writer in self._writers:
            writer.add(frame)
        for writer in self._image_writers:
            writer.add(frame, img_bgr)
        self.frames += 1
        self.hands += len(frame.result.hands)

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


def open_writers(formats: Sequence[str], info: UnitInfo) -> UnitWriters:
    """The writers of ``formats`` (see :data:`FORMATS`) for the input ``info`` describes."""
    return UnitWriters(formats, info)
