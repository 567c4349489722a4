"""Typed results of one frame: :class:`Hand` and :class:`FrameResult`, and the :class:`Camera` they are placed in.

Frames and units, for every array here:

- image: pixels, origin at the top-left corner of the top-left pixel's centre (OpenCV), x right, y down;
- camera: metres, x right, y down, z away from the camera (OpenCV's pinhole convention);
- MANO model frame: metres, axes aligned with the camera's, origin at MANO's own (not the wrist); a hand's camera
  coordinates are ``keypoints_3d + cam_t``.

Joints are in OpenPose order: 0 wrist, 1-4 thumb (CMC, MCP, IP, tip), 5-8 index, 9-12 middle, 13-16 ring,
17-20 pinky (MCP, PIP, DIP, tip). Every array is read-only: a result is a value, safe to share between threads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .detectors import HandDetection

LABELS = ("Right", "Left")


def frozen_array(value: Any, dtype: type = np.float32) -> np.ndarray:
    """A read-only copy of ``value`` as a ``dtype`` array."""
    arr = np.array(value, dtype=dtype)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class Camera:
    """A pinhole camera of the full image: focal lengths ``fx``, ``fy`` and principal point ``cx``, ``cy``, pixels.

    A camera point ``(X, Y, Z)`` (metres) is seen at pixel ``(fx X / Z + cx, fy Y / Z + cy)``.
    """

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def hamer_default(cls, image_size: tuple[int, int], focal_length: float = 5000.0,
                      crop_size: int = 256) -> Camera:
        """The camera HaMeR's demo assumes for a ``(W, H)`` image: focal ``focal_length / crop_size * max(W, H)``
        (5000 px at 256 px), principal point at the image centre ``(W / 2, H / 2)``."""
        width, height = image_size
        focal = float(np.float32(focal_length) / np.float32(crop_size) * np.float32(max(width, height)))
        return cls(focal, focal, width / 2.0, height / 2.0)

    @classmethod
    def from_fov(cls, fov_deg: float, image_size: tuple[int, int]) -> Camera:
        """The camera of a ``(W, H)`` image with horizontal field of view ``fov_deg`` degrees, square pixels and
        the principal point at the image centre: ``f = W / 2 / tan(fov / 2)``."""
        if not (isinstance(fov_deg, (int, float)) and 0 < fov_deg < 180):
            raise ValueError(f"the field of view must be a number of degrees in (0, 180), got {fov_deg!r}")
        width, height = image_size
        focal = width / 2.0 / math.tan(math.radians(fov_deg) / 2.0)
        return cls(focal, focal, width / 2.0, height / 2.0)

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"a camera needs finite fx, fy > 0 and cx, cy in pixels, got {values}")
        for name, value in zip(("fx", "fy", "cx", "cy"), values, strict=True):
            object.__setattr__(self, name, float(value))

    def as_list(self) -> list[float]:
        """``[fx, fy, cx, cy]`` pixels."""
        return [self.fx, self.fy, self.cx, self.cy]

    @property
    def matrix(self) -> np.ndarray:
        """The (3, 3) intrinsic matrix K, float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) camera points in metres -> (..., 2) float32 pixels."""
        points = np.asarray(points, dtype=np.float32)
        xy = points[..., :2] / points[..., 2:]
        scale = np.array([self.fx, self.fy], dtype=np.float32)
        center = np.array([self.cx, self.cy], dtype=np.float32)
        return xy * scale + center


@dataclass(frozen=True)
class FieldOfView:
    """A camera given by its horizontal field of view: :meth:`Camera.from_fov` for each image's size."""

    fov_deg: float

    def __post_init__(self) -> None:
        Camera.from_fov(self.fov_deg, (1, 1))  # validates

    def __call__(self, image_size: tuple[int, int]) -> Camera:
        return Camera.from_fov(self.fov_deg, image_size)


CameraSpec = Camera | FieldOfView | Callable[[tuple[int, int]], Camera]


@dataclass(frozen=True, eq=False)
class ManoParams:
    """MANO parameters of one hand as the network gives them: rotation matrices ``global_orient`` (1, 3, 3) and
    ``hand_pose`` (15, 3, 3), shape ``betas`` (10,). Left hands are in the mirrored (right-hand) convention the
    network runs them in: see the README's *Left hands* for the conversion."""

    global_orient: np.ndarray
    hand_pose: np.ndarray
    betas: np.ndarray


@dataclass(frozen=True, eq=False)
class NetworkOutput:
    """The raw network outputs of one hand (left hands still mirrored), as HaMeR's ``forward_step`` gives them.

    ``pred_cam`` (3,) weak-perspective crop camera ``[s, tx, ty]``; ``pred_cam_t`` (3,) metres, its translation
    ``[tx, ty, 2 f / (S s)]`` for the crop camera of ``focal_length`` (2,) pixels at crop size S;
    ``pred_keypoints_3d`` (21, 3) and ``pred_vertices`` (778, 3) metres, MANO frame; ``pred_keypoints_2d`` (21, 2)
    crop coordinates in [-0.5, 0.5] of the crop side.
    """

    pred_cam: np.ndarray
    pred_cam_t: np.ndarray
    focal_length: np.ndarray
    pred_keypoints_3d: np.ndarray
    pred_vertices: np.ndarray
    pred_keypoints_2d: np.ndarray


@dataclass(frozen=True, eq=False)
class Hand:
    """One hand of one frame.

    Attributes:
        label: "Right" or "Left", the subject's own hand, as HaMeR ran it (the crop is mirrored for "Left").
        box: float32 (4,) ``[x1, y1, x2, y2]`` image pixels, the box the crop was made from.
        score: the detector's confidence: handedness score (hand landmarker), mean visibility of the pose points
            used (pose fallback), NaN for a box the user gave, the file's for a box from a file.
        detector: "hand" (MediaPipe hand landmarker), "pose" (pose-landmarker fallback), "user" (a box given to
            ``predict``), "file" (``hamer.boxfile.BoxesFromFile``) or another detector's name
            (:class:`hamer.detectors.HandDetection`'s ``source``).
        detected_label: the label the detector gave (differs from ``label`` when a video tracker holds a label).
        track_id: the hand's identity across the frames of a video; -1 outside videos.
        landmarks: float32 (K, 2) pixels, the detector's points (21 hand landmarks, or pose wrist, pinky, index,
            thumb); None for user boxes and detectors that give none.
        box_center, box_size: the square crop the network saw: centre (2,) and side, pixels.
        keypoints_3d: float32 (21, 3) metres, MANO frame with camera axes, left hands un-mirrored.
        keypoints_2d: float32 (21, 2) image pixels: ``keypoints_3d + cam_t`` projected with the frame's camera.
        cam_t: float32 (3,) metres, the hand's translation into the camera frame.
        vertices: float32 (778, 3) metres, like ``keypoints_3d``.
        mano: the MANO parameters (see :class:`ManoParams`).
        raw: the network's outputs (see :class:`NetworkOutput`).

    Everything from ``box_center`` on is None for a hand that was only detected (``bbox_only``).
    """

    label: str
    box: np.ndarray
    score: float = float("nan")
    detector: str = "user"
    detected_label: str | None = None
    track_id: int = -1
    landmarks: np.ndarray | None = None
    box_center: np.ndarray | None = None
    box_size: float | None = None
    keypoints_3d: np.ndarray | None = None
    keypoints_2d: np.ndarray | None = None
    cam_t: np.ndarray | None = None
    vertices: np.ndarray | None = None
    mano: ManoParams | None = None
    raw: NetworkOutput | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"hand label must be 'Right' or 'Left', got {self.label!r}")
        if not (isinstance(self.detector, str) and self.detector):
            raise ValueError(f"detector must be a detector's name, got {self.detector!r}")
        if self.detected_label is None:
            object.__setattr__(self, "detected_label", self.label)

    @property
    def reconstructed(self) -> bool:
        """Whether HaMeR ran on this hand (False for detected-only hands)."""
        return self.keypoints_3d is not None

    @classmethod
    def from_detection(cls, detection: HandDetection, label: str | None = None, track_id: int = -1) -> Hand:
        """A detected-only hand from a detection, under ``label`` (default: the detected one)."""
        landmarks = None if detection.landmarks is None else frozen_array(detection.landmarks)
        return cls(label=label or detection.label, box=frozen_array(detection.box), score=float(detection.score),
                   detector=detection.source, detected_label=detection.label, track_id=track_id,
                   landmarks=landmarks)

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.1f}" for v in self.box)
        track = f", track_id={self.track_id}" if self.track_id >= 0 else ""
        relabel = f", detected_label={self.detected_label!r}" if self.detected_label != self.label else ""
        return (f"Hand(label={self.label!r}, detector={self.detector!r}, score={self.score:.3f}, box=[{box}]"
                f"{relabel}{track}, reconstructed={self.reconstructed})")

    def replace(self, **changes: Any) -> Hand:
        """A copy with ``changes`` (arrays are stored read-only)."""
        arrays = {k: frozen_array(v) if isinstance(v, np.ndarray) else v for k, v in changes.items()}
        return dataclasses.replace(self, **arrays)


@dataclass(frozen=True, eq=False)
class FrameResult:
    """The hands of one image or frame.

    Attributes:
        hands: the hands, "Right" before "Left" (at most one of each from :meth:`hamer.HAMER.predict`).
        image_size: ``(W, H)`` pixels.
        camera: the full-image camera ``cam_t`` and ``keypoints_2d`` are computed for; None when HaMeR did not run.
        detections: every hand the detector found (MediaPipe's by score, descending), when it ran; None for user
            boxes.
    """

    hands: tuple[Hand, ...]
    image_size: tuple[int, int]
    camera: Camera | None = None
    detections: tuple[HandDetection, ...] | None = None

    def __repr__(self) -> str:
        found = "" if self.detections is None else f", detections={len(self.detections)}"
        return f"FrameResult(image_size={self.image_size}, hands={list(self.hands)}{found}, camera={self.camera})"

    def __getitem__(self, label: str) -> Hand:
        """The hand labelled ``label``; KeyError when there is none."""
        for hand in self.hands:
            if hand.label == label:
                return hand
        raise KeyError(label)

    def get(self, label: str) -> Hand | None:
        """The hand labelled ``label``, or None."""
        return next((h for h in self.hands if h.label == label), None)

    @property
    def labels(self) -> list[str]:
        return [h.label for h in self.hands]

    @property
    def keypoints_3d(self) -> dict[str, np.ndarray]:
        """``{label: (21, 3) metres}`` of the reconstructed hands (what ``HAMER.process`` returns first)."""
        return {h.label: h.keypoints_3d for h in self.hands if h.reconstructed}

    @property
    def boxes(self) -> dict[str, np.ndarray]:
        """``{label: (4,) pixels}`` of every hand (what ``HAMER.process`` returns second)."""
        return {h.label: h.box for h in self.hands}

    def as_dict(self) -> dict[str, Any]:
        """The seed's ``HAMER.result`` dict: batched arrays in ``hands`` order (keys in the README)."""
        out: dict[str, Any] = {"hands": self.labels}
        done = [h for h in self.hands if h.reconstructed]
        if done and len(done) == len(self.hands):
            out.update(_batched(done, self.camera))
        if self.detections is not None:
            out.update(_mediapipe_fields(self.hands, self.detections))
        return out


def _batched(hands: list[Hand], camera: Camera) -> dict[str, Any]:
    def stack(get: Any) -> np.ndarray:
        return np.stack([get(h) for h in hands])

    return {
        "pred_cam": stack(lambda h: h.raw.pred_cam),
        "pred_cam_t": stack(lambda h: h.raw.pred_cam_t),
        "focal_length": stack(lambda h: h.raw.focal_length),
        "pred_keypoints_3d": stack(lambda h: h.raw.pred_keypoints_3d),
        "pred_vertices": stack(lambda h: h.raw.pred_vertices),
        "pred_keypoints_2d": stack(lambda h: h.raw.pred_keypoints_2d),
        "pred_mano_params": {
            "global_orient": stack(lambda h: h.mano.global_orient),
            "hand_pose": stack(lambda h: h.mano.hand_pose),
            "betas": stack(lambda h: h.mano.betas),
        },
        "right": np.array([h.label == "Right" for h in hands]),
        "keypoints_3d": stack(lambda h: h.keypoints_3d),
        "vertices": stack(lambda h: h.vertices),
        "cam_t_full": stack(lambda h: h.cam_t),
        "keypoints_2d": stack(lambda h: h.keypoints_2d),
        "box_center": stack(lambda h: h.box_center),
        "box_size": np.array([h.box_size for h in hands], dtype=np.float32),
        "focal_length_full": np.float32(camera.fx),
    }


def _mediapipe_fields(hands: tuple[Hand, ...], detections: tuple[HandDetection, ...]) -> dict[str, Mapping]:
    used = {h.label: _detection_of(h, detections) for h in hands}
    return {
        "detections": list(detections),
        "mp_detections": used,
        "mp_kpts": {label: det.landmarks for label, det in used.items()},
        "mp_source": {label: det.source for label, det in used.items()},
    }


def _detection_of(hand: Hand, detections: tuple[HandDetection, ...]) -> HandDetection:
    return next(d for d in detections if d.label == hand.detected_label and np.array_equal(d.box, hand.box))
