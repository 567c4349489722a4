"""Wavefront OBJ meshes: ``<name>.obj/frame_<frame:06d>_<Right|Left>.obj``, one per reconstructed hand.

Vertices are ``vertices + cam_t``: metres in the camera frame (x right, y down, z away), so the hands of a frame
sit where they are in the scene. Faces are MANO's 1538 triangles (1-based); left hands, un-mirrored, take them
with the winding reversed so that their normals point outwards as the right hand's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_folder, naming
from ..outputs import Frame
from ..results import Hand


def obj_text(hand: Hand, faces: np.ndarray) -> str:
    """The OBJ file of one reconstructed hand."""
    vertices = (hand.vertices + hand.cam_t).astype(np.float64)
    triangles = faces if hand.label == "Right" else faces[:, ::-1]
    lines = [f"# hamer: {hand.label} hand, metres, camera frame (x right, y down, z away)"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a} {b} {c}" for a, b, c in (np.asarray(triangles, dtype=np.int64) + 1)]
    return "\n".join(lines) + "\n"


class ObjWriter:
    """Writes the meshes of each frame's reconstructed hands into ``folder`` (whole or not at all)."""

    def __init__(self, folder: Path, faces: np.ndarray) -> None:
        self.folder, self.faces = Path(folder), np.asarray(faces)

    def __enter__(self) -> ObjWriter:
        self._context = atomic_folder(self.folder)
        self._staging = self._context.__enter__()
        return self

    def add(self, frame: Frame) -> None:
        for hand in frame.result.hands:
            if hand.reconstructed:
                path = self._staging / f"frame_{frame.index:06d}_{hand.label}.obj"
                with naming(self.folder / path.name):
                    path.write_text(obj_text(hand, self.faces), encoding="ascii")

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)
