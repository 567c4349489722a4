"""Hands from a file of boxes: a :class:`hamer.detectors.Detector` that reads each frame's boxes instead of
looking.

The file is JSON Lines (UTF-8), one object per frame or image; frames and images absent from it have no hand:

    {"frame": 0, "hands": [{"label": "Right", "box": [x1, y1, x2, y2], "score": 0.9}]}
    {"frame": 1, "hands": []}

or, for images (a folder's, or lone ones), by file name (without its folder):

    {"image": "IMG_0001.jpg", "hands": [{"label": "Left", "box": [12.5, 40, 96, 130]}]}

- ``frame``: the frame's index in its video, 0-based in decoding order; lines in increasing order. Without a
  :class:`~hamer.detectors.FrameRef` (e.g. ``HAMER.predict``), the detector's n-th call is frame n.
- ``image``: the image's file name; each at most once. A file keys either frames or images, not both.
- ``label``: "Right" or "Left", the subject's own hand; ``box``: four numbers, image pixels (x1, y1, x2, y2), that
  must overlap the image; ``score``: optional number (default 1.0), used to choose among hands of one label.

The file is checked whole when opened (ValueError naming the file and line); then only an index of line offsets is
kept (about 24 bytes a line) and each frame's line is read when asked. Files over :data:`MAX_FILE_BYTES` and lines
over :data:`MAX_LINE_BYTES` are refused. Hands found here have ``detector`` "file" and no landmarks.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .configs import PathLike
from .detectors import FrameRef, HandDetection
from .pipeline import box_problem
from .results import LABELS

__all__ = ["BoxFileDetectors", "BoxesFromFile", "MAX_FILE_BYTES", "MAX_LINE_BYTES"]

MAX_FILE_BYTES = 256 * 2**20  # about a million frames of two hands
MAX_LINE_BYTES = 2**20
MAX_FRAME = 2**53  # largest frame index: beyond any video, and exact in a float
SOURCE = "file"


class BoxesFromFile:
    """The hands of each frame or image as a JSON Lines file gives them (format in the module docstring).

    Use as a context manager or call :meth:`close`. Not thread-safe: one per thread.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)  # OSError naming the file
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{self.path}: {size} bytes, more than the {MAX_FILE_BYTES} a boxes file may have")
        self._file: IO[bytes] | None = open(self.path, "rb")  # closed by close()
        self._calls = 0
        self._frames, self._frame_offsets, self._frame_lines = array("q"), array("q"), array("q")
        self._images: dict[str, tuple[int, int]] = {}
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    def _index(self) -> None:
        """Check every line; keep where each frame's (or image's) line starts."""
        offset = 0
        for number, raw in enumerate(iter(lambda: self._file.readline(MAX_LINE_BYTES + 1), b""), start=1):
            where = f"{self.path} line {number}"
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{where}: longer than {MAX_LINE_BYTES} bytes")
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            key = _parse_line(raw, where)[0]
            if isinstance(key, str):
                if key in self._images:
                    raise ValueError(f"{where}: image {key!r} again (first on line {self._images[key][1]})")
                self._images[key] = (start, number)
            else:
                if self._frames and key <= self._frames[-1]:
                    raise ValueError(f"{where}: frame {key} after frame {self._frames[-1]}: frames must increase")
                self._frames.append(key)
                self._frame_offsets.append(start)
                self._frame_lines.append(number)
            if self._frames and self._images:
                raise ValueError(f"{where}: a file keys either frames or images, not both")

    def detect(self, img_bgr: np.ndarray, timestamp_ms: int | None = None,
               frame: FrameRef | None = None) -> list[HandDetection]:
        """The hands the file gives for this frame (by ``frame.index``, or the call count without ``frame``) or
        image (by the name of ``frame.path``); ValueError naming the file and line for a box off the image."""
        del timestamp_ms  # frames are found by index
        if self._file is None:
            raise RuntimeError(f"BoxesFromFile({self.path!r}) is closed")
        calls, self._calls = self._calls, self._calls + 1
        if self._images:
            if frame is None:
                raise ValueError(f"{self.path} gives boxes by image file name: the image's name is needed")
            found = self._images.get(os.path.basename(frame.path))
        else:
            index = calls if frame is None else frame.index
            at = bisect_left(self._frames, index)
            found = None
            if at < len(self._frames) and self._frames[at] == index:
                found = (self._frame_offsets[at], self._frame_lines[at])
        if found is None:
            return []
        offset, number = found
        self._file.seek(offset)
        where = f"{self.path} line {number}"
        key, hands = _parse_line(self._file.readline(MAX_LINE_BYTES + 1), where)  # checked again: files change
        if key != (os.path.basename(frame.path) if self._images else index):
            raise ValueError(f"{where}: the file changed since it was opened")
        return [_detection(hand, img_bgr.shape, where) for hand in hands]

    def close(self) -> None:
        """Close the file; further :meth:`detect` calls raise. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> BoxesFromFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class BoxFileDetectors:
    """A :data:`hamer.detectors.DetectorFactory` (picklable, for Ray too): every detector it makes, in either
    mode, reads ``path`` (:class:`BoxesFromFile`). Made from one file, it suits one video, or images by name."""

    path: str

    def __call__(self, mode: str) -> BoxesFromFile:
        del mode  # the file gives the boxes whatever the mode
        return BoxesFromFile(self.path)


def _parse_line(raw: bytes, where: str) -> tuple[int | str, list[dict[str, Any]]]:
    """The key (frame index or image name) and hands of a valid line; ValueError naming ``where`` otherwise."""
    try:
        line = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise ValueError(f"{where}: not a JSON object ({exc})") from None
    if not isinstance(line, dict) or set(line) not in ({"frame", "hands"}, {"image", "hands"}):
        raise ValueError(f'{where}: need an object of "hands" and one of "frame" or "image", got {raw[:80]!r}')
    key = line.get("frame", line.get("image"))
    if "frame" in line and not (type(key) is int and 0 <= key <= MAX_FRAME):
        raise ValueError(f'{where}: "frame" must be an integer from 0 to {MAX_FRAME}, got {key!r:.40}')
    if "image" in line and not (isinstance(key, str) and key and os.path.basename(key) == key):
        raise ValueError(f'{where}: "image" must be a file name (no folder), got {key!r}')
    hands = line["hands"]
    if not isinstance(hands, list):
        raise ValueError(f'{where}: "hands" must be a list, got {type(hands).__name__}')
    for hand in hands:
        _check_hand(hand, where)
    return key, hands


def _check_hand(hand: Any, where: str) -> None:
    if not isinstance(hand, dict) or not {"label", "box"} <= set(hand) <= {"label", "box", "score"}:
        raise ValueError(f'{where}: each hand must be an object of "label", "box" and optionally "score", '
                         f"got {hand!r:.80}")
    if hand["label"] not in LABELS:
        raise ValueError(f"{where}: label must be 'Right' or 'Left', got {hand['label']!r:.40}")
    box = hand["box"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise ValueError(f"{where}: box must be 4 numbers [x1, y1, x2, y2], got {box!r:.80}")
    if "score" in hand and not _is_number(hand["score"]):
        raise ValueError(f"{where}: score must be a finite number, got {hand['score']!r:.40}")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def _detection(hand: dict[str, Any], image_shape: tuple[int, ...], where: str) -> HandDetection:
    box = np.array(hand["box"], dtype=np.float64)
    problem = box_problem(box, image_shape)
    if problem:
        raise ValueError(f"{where}: {hand['label']} box {hand['box']} {problem}")
    return HandDetection(hand["label"], float(hand.get("score", 1.0)), box.astype(np.float32), None, SOURCE)
