"""The detector interface: an image in, the hands in it out, as boxes with labels and scores.

Any object with these methods is a :class:`Detector` (a ``typing.Protocol``; no base class to inherit):

    class MyDetector:                       # e.g. a YOLO hand detector
        def detect(self, img_bgr, timestamp_ms=None, frame=None) -> list[HandDetection]: ...
        def close(self) -> None: ...
        def __enter__(self): return self
        def __exit__(self, *exc): self.close()

Shipped: MediaPipe's :class:`hamer.detection.HandDetector` (the default) and :class:`hamer.boxfile.BoxesFromFile`
(boxes per frame read from a JSON Lines file).

``detect(img_bgr, timestamp_ms=None, frame=None)``:

- ``img_bgr``: uint8 (H, W, 3) BGR image, as ``cv2.imread`` and ``cv2.VideoCapture`` give it; do not modify it.
- ``timestamp_ms``: for the frames of a video, the frame's time in milliseconds, strictly increasing from call to
  call of one detector; None for independent images (and from ``HAMER.predict`` in VIDEO mode when the caller
  gives none: MediaPipe then takes the previous one + 33 ms).
- ``frame``: where the image comes from (:class:`FrameRef`: its file and index) in corpus runs; None otherwise.
- returns: a list of :class:`HandDetection`, in any order (callers sort by score). Boxes are ``(x1, y1, x2, y2)``
  float32 image pixels (origin at the top-left pixel's centre, x right, y down) and may extend past the border;
  one that does not overlap the image is skipped. Labels are the subject's own hands, "Right" or "Left".

A detector closes what it holds in :meth:`Detector.close`; whoever makes a detector closes it. ``HAMER`` closes the
MediaPipe detector it makes, never one passed in as ``HAMER(detector=...)``. A corpus run makes its detectors with
a :data:`DetectorFactory` (``hamer.units.Options.detector``) and closes each when done with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Detector", "DetectorFactory", "FrameRef", "HandDetection"]


@dataclass(frozen=True, eq=False)
class HandDetection:
    """One detected hand.

    Attributes:
        label: "Right" or "Left", the subject's own hand.
        score: the detector's confidence, higher is surer (MediaPipe: handedness score of the hand landmarker, or
            mean visibility of the pose points used, both in [0, 1]).
        box: float32 (4,) x1, y1, x2, y2 in image pixels.
        landmarks: float32 (K, 2) image pixels, the detector's points (MediaPipe: the 21 hand landmarks, or the
            pose wrist, pinky, index, thumb); None when the detector gives none.
        source: the detector's name, written to the outputs as the hand's ``detector``: "hand" or "pose"
            (MediaPipe's hand or pose landmarker), "file" (:class:`hamer.boxfile.BoxesFromFile`), or your own. A video
            tracker prefers "hand" detections to the others where they overlap.
    """

    label: str
    score: float
    box: np.ndarray
    landmarks: np.ndarray | None
    source: str


@dataclass(frozen=True)
class FrameRef:
    """Where an image comes from. ``path``: the image's file, or the video's; ``index``: the frame's index in its
    video (0-based, in decoding order), or the image's in its folder (sorted by name; 0 for a lone image)."""

    path: str
    index: int


@runtime_checkable
class Detector(Protocol):
    """Finds hands in images (see the module docstring for the arguments, frames and units)."""

    def detect(self, img_bgr: np.ndarray, timestamp_ms: int | None = None,
               frame: FrameRef | None = None) -> list[HandDetection]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Detector: ...

    def __exit__(self, *exc_info: object) -> None: ...


DetectorFactory = Callable[[str], Detector]
"""Makes a detector for a running mode: "VIDEO" (one detector per video, seeing its frames in order, with
timestamps) or "IMAGE" (one detector per worker thread, for the independent images of any number of units).
Ray workers receive it pickled: use an instance of a module-level class or a module-level function (not a lambda
or a nested function), e.g. :class:`hamer.detection.MediaPipeDetectors` or :class:`hamer.boxfile.BoxFileDetectors`.
"""
