"""What ``hamer run`` writes: per-frame records as JSON Lines and NumPy .npz, and overlay images (overlay videos:
:mod:`hamer.video`).

Every file is first written to a hidden temporary file beside its destination and moved over it with
``os.replace`` once complete (:mod:`hamer.files`); on an error or an interrupt the temporary file is removed, so no
output is ever half-written. Units: boxes and 2D joints in image pixels; 3D joints and camera translation in metres.

JSON Lines, one object per frame (floats rounded to 1e-6)::

    {"source": "clip.mp4", "frame": 0, "time_s": 0.0, "image_size": [W, H], "focal_length": 17578.1,
     "camera": [fx, fy, cx, cy],
     "hands": [{"label": "Right", "detected_label": "Right", "score": 0.98, "detector": "hand", "track_id": 0,
                "box": [x1, y1, x2, y2], "keypoints_3d": [[x, y, z] x 21], "keypoints_2d": [[u, v] x 21],
                "cam_t": [tx, ty, tz]}]}

NPZ, F frames, one slot per label (``labels`` = ["Right", "Left"]); an absent hand is NaN (-1 for ``track_id``),
so frames without hands are rows with ``num_hands`` 0: see :data:`NPZ_ARRAYS`.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .files import atomic_path, naming
from .results import LABELS, FrameResult

NPZ_ARRAYS = {
    "labels": "(2,) str: the label of each hand slot, 'Right' then 'Left'",
    "source": "(F,) str: the image file, or the video, of each frame",
    "frame": "(F,) int64: frame number in the video, or position of the image in its folder",
    "time_s": "(F,) float64: seconds from the start of the video (frame / fps); NaN for images",
    "image_size": "(F, 2) int32: width, height in pixels",
    "focal_length": "(F,) float32: pixels, of the camera HaMeR assumes (principal point at the image centre); "
                    "NaN with --bbox-only",
    "num_hands": "(F,) int8: hands reconstructed (or boxed, with --bbox-only) in the frame",
    "present": "(F, 2) bool: the slot holds a hand",
    "score": "(F, 2) float32: MediaPipe's handedness score (pose fallback: mean visibility)",
    "track_id": "(F, 2) int32: the hand's identity across the frames of a video; -1 for images and absent hands",
    "box": "(F, 2, 4) float32: x1, y1, x2, y2 pixels",
    "keypoints_3d": "(F, 2, 21, 3) float32: metres, MANO frame with camera axes (x right, y down, z away); "
                    "add cam_t for camera coordinates",
    "keypoints_2d": "(F, 2, 21, 2) float32: image pixels",
    "cam_t": "(F, 2, 3) float32: metres, translation of the hand into the camera frame",
    "camera": "(F, 4) float32: fx, fy, cx, cy pixels of the camera cam_t is for; NaN with --bbox-only",
    "global_orient": "(F, 2, 3, 3) float32: MANO global rotation (matrix), as the network gives it: left hands "
                     "mirrored (see the README's 'Left hands')",
    "hand_pose": "(F, 2, 15, 3, 3) float32: MANO joint rotations (matrices), likewise",
    "global_orient_aa": "(F, 2, 3) float32: global_orient as axis-angle (radians)",
    "hand_pose_aa": "(F, 2, 15, 3) float32: hand_pose as axis-angle (radians)",
    "betas": "(F, 2, 10) float32: MANO shape",
    "vertices": "(F, 2, 778, 3) float32: metres, like keypoints_3d; only with --vertices",
}


@dataclass(frozen=True)
class Frame:
    """One image or video frame of an input: where it comes from and its hands.

    ``index``: frame number in the video, or position of the image in its input; ``time_s``: seconds from the
    start of the video (None for images).
    """

    source: str
    index: int
    time_s: float | None
    result: FrameResult

    @property
    def focal_length(self) -> float | None:
        """The full-image focal length in pixels (None when HaMeR did not run)."""
        return None if self.result.camera is None else self.result.camera.fx


def write_image(path: Path, img_bgr: np.ndarray) -> None:
    """Write an image whole (format by the suffix of ``path``, e.g. .jpg, .png)."""
    ok, data = cv2.imencode(Path(path).suffix, img_bgr)
    if not ok:
        raise OSError(f"cannot encode an image as {Path(path).suffix}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _rounded(arr: np.ndarray | None) -> list | None:
    return None if arr is None else np.round(np.asarray(arr, dtype=np.float64), 6).tolist()


def frame_json(frame: Frame) -> dict[str, Any]:
    """The JSON Lines object of a frame (see the module docstring)."""
    return {
        "source": frame.source,
        "frame": frame.index,
        "time_s": None if frame.time_s is None else round(frame.time_s, 6),
        "image_size": list(frame.result.image_size),
        "focal_length": None if frame.focal_length is None else round(frame.focal_length, 6),
        "camera": None if frame.result.camera is None else [round(v, 6) for v in frame.result.camera.as_list()],
        "hands": [{
            "label": h.label,
            "detected_label": h.detected_label,
            "score": None if np.isnan(h.score) else round(float(h.score), 6),
            "detector": h.detector,
            "track_id": h.track_id if h.track_id >= 0 else None,
            "box": _rounded(h.box),
            "keypoints_3d": _rounded(h.keypoints_3d),
            "keypoints_2d": _rounded(h.keypoints_2d),
            "cam_t": _rounded(h.cam_t),
        } for h in frame.result.hands],
    }


def rotations_to_axis_angle(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle vectors (radians), by OpenCV's Rodrigues."""
    flat = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    out = np.array([cv2.Rodrigues(r)[0].reshape(3) for r in flat]).reshape(*np.shape(rotations)[:-2], 3)
    return out.astype(np.float32)


def _npz_row(frame: Frame, vertices: bool) -> dict[str, np.ndarray]:
    """The NPZ arrays of one frame, without the leading F axis."""
    camera = frame.result.camera
    row = {
        "source": np.array(frame.source),
        "frame": np.int64(frame.index),
        "time_s": np.float64(np.nan if frame.time_s is None else frame.time_s),
        "image_size": np.array(frame.result.image_size, dtype=np.int32),
        "focal_length": np.float32(np.nan if camera is None else camera.fx),
        "camera": np.array([np.nan] * 4 if camera is None else camera.as_list(), dtype=np.float32),
        "num_hands": np.int8(len(frame.result.hands)),
        "present": np.zeros(2, dtype=bool),
        "score": np.full(2, np.nan, dtype=np.float32),
        "track_id": np.full(2, -1, dtype=np.int32),
        "box": np.full((2, 4), np.nan, dtype=np.float32),
        "keypoints_3d": np.full((2, 21, 3), np.nan, dtype=np.float32),
        "keypoints_2d": np.full((2, 21, 2), np.nan, dtype=np.float32),
        "cam_t": np.full((2, 3), np.nan, dtype=np.float32),
        "global_orient": np.full((2, 3, 3), np.nan, dtype=np.float32),
        "hand_pose": np.full((2, 15, 3, 3), np.nan, dtype=np.float32),
        "global_orient_aa": np.full((2, 3), np.nan, dtype=np.float32),
        "hand_pose_aa": np.full((2, 15, 3), np.nan, dtype=np.float32),
        "betas": np.full((2, 10), np.nan, dtype=np.float32),
    }
    if vertices:
        row["vertices"] = np.full((2, 778, 3), np.nan, dtype=np.float32)
    for hand in frame.result.hands:
        slot = LABELS.index(hand.label)
        row["present"][slot] = True
        row["score"][slot] = hand.score
        row["track_id"][slot] = hand.track_id
        row["box"][slot] = hand.box
        for key in ("keypoints_3d", "keypoints_2d", "cam_t") + (("vertices",) if vertices else ()):
            if getattr(hand, key) is not None:
                row[key][slot] = getattr(hand, key)
        if hand.mano is not None:
            row["global_orient"][slot] = hand.mano.global_orient[0]
            row["hand_pose"][slot] = hand.mano.hand_pose
            row["global_orient_aa"][slot] = rotations_to_axis_angle(hand.mano.global_orient[0])
            row["hand_pose_aa"][slot] = rotations_to_axis_angle(hand.mano.hand_pose)
            row["betas"][slot] = hand.mano.betas
    return row


def _stack_rows(rows: list[dict[str, np.ndarray]], vertices: bool) -> dict[str, np.ndarray]:
    if rows:
        out = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    else:
        empty = _npz_row(Frame("", 0, None, FrameResult((), (0, 0))), vertices)
        out = {key: np.zeros((0, *np.shape(v)), dtype=np.asarray(v).dtype) for key, v in empty.items()}
    out["source"] = out["source"].astype(str)
    return {"labels": np.array(LABELS), **out}


def npz_arrays(frames: list[Frame], vertices: bool = False) -> dict[str, np.ndarray]:
    """The arrays of :data:`NPZ_ARRAYS` for ``frames`` (``vertices`` too when asked)."""
    return _stack_rows([_npz_row(f, vertices) for f in frames], vertices)


class FrameWriter:
    """Writes the frames of one input to ``<stem>.jsonl`` (streamed) and/or ``<stem>.npz`` (at the end).

    Use as a context manager: the files appear when the block completes, none when it raises. Only the NPZ's
    compact rows are kept in memory (about 3 kB a frame; 19 kB more per hand with ``vertices``).
    """

    def __init__(self, jsonl_path: Path | None, npz_path: Path | None, vertices: bool = False) -> None:
        self.jsonl_path = None if jsonl_path is None else Path(jsonl_path)
        self.npz_path = None if npz_path is None else Path(npz_path)
        self.vertices = vertices
        self.frames = 0
        self.hands = 0
        self._rows: list[dict[str, np.ndarray]] = []
        self._jsonl: IO[str] | None = None

    def __enter__(self) -> FrameWriter:
        self._stack = ExitStack()
        if self.jsonl_path is not None:
            self._jsonl = self._stack.enter_context(open(self._stack.enter_context(atomic_path(self.jsonl_path)),
                                                         "w", encoding="utf-8"))
        return self

    def add(self, frame: Frame) -> None:
        if self._jsonl is not None:
            with naming(self.jsonl_path):
                self._jsonl.write(json.dumps(frame_json(frame), separators=(",", ":")) + "\n")
        if self.npz_path is not None:
            self._rows.append(_npz_row(frame, self.vertices))
        self.frames += 1
        self.hands += len(frame.result.hands)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._stack.__exit__(exc_type, exc, tb)
            return
        with self._stack:
            if self._jsonl is not None:
                with naming(self.jsonl_path):
                    self._jsonl.close()  # flushed before the NPZ is written: a full disk leaves neither
            if self.npz_path is not None:
                with naming(self.npz_path), atomic_path(self.npz_path) as tmp, open(tmp, "wb") as f:
                    np.savez_compressed(f, **_stack_rows(self._rows, self.vertices))
