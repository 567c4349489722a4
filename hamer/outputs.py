"""What ``hamer run`` writes: per-frame records as JSON Lines and NumPy .npz, and overlay images or videos (H.264
MP4 or VP9 WebM: :func:`browser_codec`).

Every file is first written to a hidden temporary file beside its destination and moved over it with
``os.replace`` once complete; on an error or an interrupt the temporary file is removed, so no output is ever
half-written. Units: boxes and 2D joints in image pixels; 3D joints and camera translation in metres.

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

import functools
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .results import LABELS, FrameResult

log = logging.getLogger(__name__)

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


TEMP_PREFIX = ".hamer-tmp-"  # temporary files: short ASCII names whatever the destination's (then os.replace)
_temp_counter = itertools.count()
_UMASK_LOCK = threading.Lock()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` if the block completes.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` left as it was.
    """
    path = Path(path)
    suffix = path.suffix if path.suffix[1:].isascii() and path.suffix[1:].isalnum() else ""
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_counter)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def naming(path: Path | None) -> Iterator[None]:
    """Name ``path`` in an OSError of the block that names no file (a full disk while writing it: EFBIG, ENOSPC)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or path is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` (an earlier one removed) if the block completes;
    removed with its files otherwise."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_counter)}")
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def give_default_permissions(path: Path) -> None:
    """Give ``path`` the permissions of any new file (``0o666`` less the umask): libraries that write weights
    (safetensors, onnx) create their files private (0600)."""
    with _UMASK_LOCK:  # reading the umask means setting it
        umask = os.umask(0)
        os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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


VIDEO_CODECS = {"h264": ".mp4", "vp9": ".webm", "mp4v": ".mp4"}  # codec -> file suffix
_CV2_FOURCC = {"vp9": "VP90", "mp4v": "mp4v"}


@functools.cache
def browser_codec() -> str:
    """The overlay videos' codec: "h264" (H.264 in MP4, by PyAV's FFmpeg) when PyAV has an H.264 encoder, else
    "vp9" (VP9 in WebM, by OpenCV) when OpenCV can write it, else "mp4v" (MPEG-4 Part 2, which browsers do not
    play). Both of the first two play in browsers."""
    try:
        import av

        av.codec.Codec("libx264", "w")
        return "h264"
    except Exception:  # noqa: BLE001 - PyAV missing, or built without libx264
        pass
    with tempfile.TemporaryDirectory() as folder:
        writer = cv2.VideoWriter(str(Path(folder) / "probe.webm"), cv2.VideoWriter_fourcc(*"VP90"), 25, (16, 16))
        ok = writer.isOpened()
        writer.release()
    if ok:
        return "vp9"
    log.warning("neither PyAV's H.264 nor OpenCV's VP9 encoder is installed: overlay videos are MPEG-4 Part 2, "
                "which browsers do not play (pip install av)")
    return "mp4v"


class VideoFileWriter:
    """A video written frame by frame, whole or not at all: ``codec`` one of :data:`VIDEO_CODECS` (default
    :func:`browser_codec`), in the container of ``path``'s suffix; its size is the first frame's, odd sides padded
    by a pixel (edge repeated) to the even sides 4:2:0 video needs.

    Use as a context manager: the file appears when the block completes (and a frame was written).
    """

    def __init__(self, path: Path, fps: float, codec: str | None = None) -> None:
        self.path, self.fps = Path(path), fps
        self.codec = codec or browser_codec()
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {self.codec!r}")
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> VideoFileWriter:
        return self

    def write(self, img_bgr: np.ndarray) -> None:
        if self._writer is None:
            self._open(img_bgr.shape[1], img_bgr.shape[0])
        height, width = img_bgr.shape[:2]
        pad_w, pad_h = self._size[0] - width, self._size[1] - height
        if pad_w or pad_h:
            img_bgr = cv2.copyMakeBorder(img_bgr, 0, max(pad_h, 0), 0, max(pad_w, 0), cv2.BORDER_REPLICATE)
            img_bgr = img_bgr[:self._size[1], :self._size[0]]
        if self.codec == "h264":
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img_bgr), format="bgr24")
            for packet in self._stream.encode(frame):
                self._writer.mux(packet)
        else:
            self._writer.write(img_bgr)

    def _open(self, width: int, height: int) -> None:
        self._file = atomic_path(self.path)
        tmp = self._file.__enter__()
        self._size = (width + width % 2, height + height % 2)
        try:
            if self.codec == "h264":
                import av

                self._av = av
                try:
                    self._fh = open(tmp, "wb")  # noqa: SIM115 - closed in __exit__, after the container
                except OSError as exc:
                    raise OSError(f"cannot write an H.264 video ({self.path}): {exc.strerror or exc}") from None
                self._writer = av.open(self._fh, mode="w", format="mp4", options={"movflags": "+faststart"})
                self._stream = self._writer.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
                self._stream.width, self._stream.height = self._size
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": "20", "preset": "veryfast"}
            else:
                fourcc = cv2.VideoWriter_fourcc(*_CV2_FOURCC[self.codec])
                self._writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise OSError(f"cannot write a {self.codec} video ({self.path}): OpenCV cannot open it")
        except BaseException as exc:
            self._file.__exit__(type(exc), exc, exc.__traceback__)
            self._writer = None
            raise
        log.info("overlay video %s: %s", self.path, {"h264": "H.264 in MP4 (PyAV)", "vp9": "VP9 in WebM (OpenCV)",
                                                      "mp4v": "MPEG-4 Part 2 in MP4 (OpenCV)"}[self.codec])

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._writer is None:
            return
        try:
            if self.codec == "h264":
                try:
                    if exc_type is None:
                        for packet in self._stream.encode():
                            self._writer.mux(packet)
                    self._writer.close()
                finally:
                    self._fh.close()
            else:
                self._writer.release()
        finally:
            self._file.__exit__(exc_type, exc, tb)
