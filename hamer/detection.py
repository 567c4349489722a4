"""Hand boxes from MediaPipe's hand landmarker, with the pose landmarker as fallback.

Labels are the subject's own hands ("Right"/"Left") in the unmirrored image, as MediaPipe Tasks reports them for
both landmarkers. Boxes are axis-aligned ``(x1, y1, x2, y2)`` in image pixels and may extend past the image border.

* Hand landmarker: the box is the min/max of the 21 hand landmarks (``x * W``, ``y * H``).
* Pose fallback, only run when the hand landmarker found no hand of one side (or is disabled): that side's pose
  wrist, pinky, index and thumb (pose indices 15/17/19/21 for the subject's left, 16/18/20/22 for the right) are
  used when all four have visibility >= ``min_pose_visibility``. These points span only the palm, so the box is
  the square centred on the middle-finger knuckle ``m = (2 * index + pinky) / 3`` with side ``2 * |m - wrist|``
  (MediaPipe Holistic's hand-from-pose box, before its 2.7x re-crop expansion), grown to contain the four points:
  the whole hand lies within about one palm length of ``m`` at any in-plane rotation.

:class:`HandDetector` implements :class:`hamer.detectors.Detector`; :class:`MediaPipeDetectors` makes them for a
corpus run (a :data:`hamer.detectors.DetectorFactory`), and :func:`detector_options` builds their options from a
user's settings (``HAMER``'s ``task_paths`` and ``num_hands``, a corpus run's ``max_hands``).

Not thread-safe: use one detector per thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .configs import PathLike
from .detectors import FrameRef, HandDetection
from .images import as_bgr
from .mediapipe_import import import_mediapipe
from .native_output import stderr_to_log

if TYPE_CHECKING:
    import mediapipe as mp
    from mediapipe.tasks.python import vision

logger = logging.getLogger(__name__)

HAND_TASK_PATH = Path(__file__).resolve().parent / "tasks" / "hand_landmarker.task"
POSE_TASK_PATH = Path(__file__).resolve().parent / "tasks" / "pose_landmarker.task"

SIDES = ("Right", "Left")
# Pose landmark indices (wrist, pinky, index, thumb) of the subject's own hand.
POSE_HAND_INDICES = {"Left": (15, 17, 19, 21), "Right": (16, 18, 20, 22)}
# Frame step assumed in VIDEO mode when no timestamp is given (about 30 fps).
DEFAULT_FRAME_STEP_MS = 33
MAX_TIMESTAMP_MS = 10**12  # about 31 years of video; MediaPipe counts microseconds in an int64
MAX_PEOPLE = 100  # most hands (poses) a landmarker may be asked for
QUIET_FIRST_CALLS = 3  # detect calls whose native stderr output is captured (the runtime logs while warming up)

@dataclass
class DetectorOptions:
    """Options of :class:`HandDetector`; the confidences are MediaPipe's (defaults as MediaPipe's).

    Attributes:
        hand_task_path: hand landmarker bundle; None disables the hand landmarker.
        pose_task_path: pose landmarker bundle; None disables the pose fallback.
        mode: "IMAGE" (independent images) or "VIDEO" (frames of one video, with tracking).
        num_hands: most hands the hand landmarker reports.
        num_poses: most people the pose landmarker reports.
        min_pose_visibility: least visibility of each pose point a fallback box is made from.
    """

    hand_task_path: PathLike | None = HAND_TASK_PATH
    pose_task_path: PathLike | None = POSE_TASK_PATH
    mode: str = "IMAGE"
    num_hands: int = 2
    num_poses: int = 2
    min_hand_detection_confidence: float = 0.5
    min_hand_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    min_pose_visibility: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("IMAGE", "VIDEO"):
            raise ValueError(f"mode must be 'IMAGE' or 'VIDEO', got {self.mode!r}")
        for name in ("num_hands", "num_poses"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PEOPLE):
                raise ValueError(f"{name} must be an integer from 1 to {MAX_PEOPLE}, got {value!r}")
        for name in ("min_hand_detection_confidence", "min_hand_presence_confidence", "min_tracking_confidence",
                     "min_pose_visibility"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")


def detector_options(task_paths: Mapping[str, PathLike | None] | None = None, num_hands: int = 2,
                     mode: str = "IMAGE") -> DetectorOptions:
    """MediaPipe's options from a user's settings: ``task_paths`` ``{"hand": path, "pose": path}`` (a missing key
    disables that landmarker; None: both bundled models, as this module names them when called) and ``num_hands``.
    ValueError for another key, mode or count."""
    if task_paths is None:
        task_paths = {"hand": HAND_TASK_PATH, "pose": POSE_TASK_PATH}
    unknown = set(task_paths) - {"hand", "pose"}
    if unknown:
        raise ValueError(f"task_paths keys must be 'hand' and/or 'pose', got {sorted(unknown)}")
    return DetectorOptions(hand_task_path=task_paths.get("hand"), pose_task_path=task_paths.get("pose"), mode=mode,
                           num_hands=num_hands)


@dataclass(frozen=True)
class MediaPipeDetectors:
    """A :data:`hamer.detectors.DetectorFactory` of MediaPipe detectors: ``factory(mode)`` is a new
    :class:`HandDetector` with ``options`` in running mode ``mode`` ("IMAGE" or "VIDEO"). Picklable (Ray).

    ``options``: default :func:`detector_options` (the bundled models, 2 hands) when the factory is made."""

    options: DetectorOptions = field(default_factory=detector_options)

    def __call__(self, mode: str) -> HandDetector:
        return HandDetector(dataclasses.replace(self.options, mode=mode))


def _check_task_path(path: PathLike | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"MediaPipe task bundle not found: {path}")
    return str(path)


def _to_rgb(img_bgr: np.ndarray) -> np.ndarray:
    """A contiguous uint8 RGB copy of a BGR, BGRA or grayscale uint8 image (checked by :func:`as_bgr`)."""
    return cv2.cvtColor(as_bgr(img_bgr), cv2.COLOR_BGR2RGB)


def pose_hand_box(points: np.ndarray) -> np.ndarray:
    """Hand box (4,) from pose wrist, pinky, index, thumb points (4, 2) in pixels; see the module docstring."""
    wrist, pinky, index = points[0], points[1], points[2]
    middle = (2.0 * index + pinky) / 3.0
    half = np.linalg.norm(middle - wrist)
    lo = np.minimum(middle - half, points.min(axis=0))
    hi = np.maximum(middle + half, points.max(axis=0))
    return np.concatenate([lo, hi]).astype(np.float32)


_open_detectors: weakref.WeakSet[HandDetector] = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_detectors() -> None:
    for detector in list(_open_detectors):
        detector.close()


def _register_exit_hook() -> None:
    """Close open detectors at exit while MediaPipe's dispatcher threads still run.

    Each landmarker runs its C calls on a ThreadPoolExecutor thread, which is stopped by concurrent.futures' hook in
    ``threading._shutdown``, before ``atexit`` hooks: a landmarker closed later (by ``atexit`` or its ``__del__``)
    prints a traceback. CPython's ``threading._register_atexit`` (used by concurrent.futures for the same reason)
    runs hooks in reverse order, so this one, registered after a landmarker made its executor, runs first.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        threading._register_atexit(_close_open_detectors)
        _exit_hook_registered = True


class HandDetector:
    """Finds hands in BGR images: MediaPipe hand landmarker first, pose landmarker for a missing side.

    Use as a context manager or call :meth:`close`; detectors left open are closed at interpreter exit.
    """

    def __init__(self, options: DetectorOptions | None = None) -> None:
        options = options if options is not None else DetectorOptions()
        if options.hand_task_path is None and options.pose_task_path is None:
            raise ValueError("hand_task_path and pose_task_path are both None: nothing to detect with")
        hand_path = _check_task_path(options.hand_task_path)
        pose_path = _check_task_path(options.pose_task_path)
        self._options = options
        import_mediapipe()  # on first use, without its audio and drawing modules
        from mediapipe.tasks.python import BaseOptions, vision

        running_mode = vision.RunningMode[options.mode]
        self._last_timestamp_ms: int | None = None
        self._hand: vision.HandLandmarker | None = None
        self._pose: vision.PoseLandmarker | None = None
        self._closed = False
        self._quiet_calls = QUIET_FIRST_CALLS
        try:
            with stderr_to_log(logger, "mediapipe"):
                if hand_path is not None:
                    self._hand = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
                        base_options=BaseOptions(model_asset_path=hand_path),
                        running_mode=running_mode,
                        num_hands=options.num_hands,
                        min_hand_detection_confidence=options.min_hand_detection_confidence,
                        min_hand_presence_confidence=options.min_hand_presence_confidence,
                        min_tracking_confidence=options.min_tracking_confidence))
                if pose_path is not None:
                    self._pose = vision.PoseLandmarker.create_from_options(vision.PoseLandmarkerOptions(
                        base_options=BaseOptions(model_asset_path=pose_path),
                        running_mode=running_mode,
                        num_poses=options.num_poses))
        except BaseException:
            self.close()
            raise
        _open_detectors.add(self)
        _register_exit_hook()

    def detect(self, img_bgr: np.ndarray, timestamp_ms: int | None = None,
               frame: FrameRef | None = None) -> list[HandDetection]:
        """All hands found in a BGR (or BGRA, grayscale) uint8 image, by score descending.

        ``timestamp_ms`` is the frame time in VIDEO mode and must increase strictly from call to call; when None it
        is the previous one + 33 ms (0 for the first frame). It is ignored in IMAGE mode, and ``frame`` always.
        """
        del frame  # MediaPipe needs only the pixels (and the time)
        if self._closed:
            raise RuntimeError("HandDetector is closed")
        rgb = _to_rgb(img_bgr)
        height, width = rgb.shape[:2]
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        timestamp = self._next_timestamp(timestamp_ms) if self._options.mode == "VIDEO" else None

        quiet = self._quiet_calls > 0  # the native side logs on its first calls only: capture those
        self._quiet_calls -= quiet
        with stderr_to_log(logger, "mediapipe") if quiet else nullcontext():
            detections = self._detect_hands(image, timestamp, width, height)
            missing = [side for side in SIDES if side not in {d.label for d in detections}]
            if missing and self._pose is not None:
                logger.debug("no hand landmarks for %s: running the pose landmarker", missing)
                detections += self._detect_pose_hands(image, timestamp, width, height, missing)
        return sorted(detections, key=lambda d: d.score, reverse=True)

    def close(self) -> None:
        """Release the landmarkers; further :meth:`detect` calls raise. Safe to call twice."""
        self._closed = True
        _open_detectors.discard(self)
        with stderr_to_log(logger, "mediapipe"):
            for landmarker in (self._hand, self._pose):
                if landmarker is not None:
                    landmarker.close()
        self._hand = self._pose = None

    def __enter__(self) -> HandDetector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_timestamp(self, timestamp_ms: int | None) -> int:
        last = self._last_timestamp_ms
        if timestamp_ms is None:
            timestamp_ms = 0 if last is None else last + DEFAULT_FRAME_STEP_MS
        if not (isinstance(timestamp_ms, (int, np.integer)) and not isinstance(timestamp_ms, bool)
                and 0 <= timestamp_ms <= MAX_TIMESTAMP_MS):
            raise ValueError(f"timestamp_ms must be an integer from 0 to {MAX_TIMESTAMP_MS} ms, got {timestamp_ms!r}")
        timestamp_ms = int(timestamp_ms)
        if last is not None and timestamp_ms <= last:
            raise ValueError(f"VIDEO timestamps must increase strictly: got {timestamp_ms} ms after {last} ms")
        self._last_timestamp_ms = timestamp_ms
        return timestamp_ms

    def _detect_hands(self, image: mp.Image, timestamp: int | None, width: int,
                      height: int) -> list[HandDetection]:
        if self._hand is None:
            return []
        if timestamp is None:
            result = self._hand.detect(image)
        else:
            result = self._hand.detect_for_video(image, timestamp)
        detections = []
        for handedness, landmarks in zip(result.handedness, result.hand_landmarks, strict=True):
            points = np.array([(lm.x * width, lm.y * height) for lm in landmarks], dtype=np.float32)
            box = np.concatenate([points.min(axis=0), points.max(axis=0)])
            detections.append(HandDetection(label=handedness[0].category_name, score=float(handedness[0].score),
                                            box=box, landmarks=points, source="hand"))
        return detections

    def _detect_pose_hands(self, image: mp.Image, timestamp: int | None, width: int, height: int,
                           sides: list[str]) -> list[HandDetection]:
        if timestamp is None:
            result = self._pose.detect(image)
        else:
            result = self._pose.detect_for_video(image, timestamp)
        detections = []
        for pose in result.pose_landmarks:
            for side in sides:
                used = [pose[i] for i in POSE_HAND_INDICES[side]]
                visibility = np.array([lm.visibility for lm in used])
                if visibility.min() < self._options.min_pose_visibility:
                    continue
                points = np.array([(lm.x * width, lm.y * height) for lm in used], dtype=np.float32)
                detections.append(HandDetection(label=side, score=float(visibility.mean()),
                                                box=pose_hand_box(points), landmarks=points, source="pose"))
        return detections
