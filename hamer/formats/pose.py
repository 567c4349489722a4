"""``.pose`` files (the pose-format package of the sign-language-processing toolchain).

The file has MediaPipe Holistic's hand components, ``LEFT_HAND_LANDMARKS`` and ``RIGHT_HAND_LANDMARKS``: 21 points
each with MediaPipe's hand landmark names (``WRIST``, ``THUMB_CMC`` ... ``PINKY_TIP``, the same order as ours) and
limbs, format ``XYZC``, one person. x, y: image pixels (``keypoints_2d``). z: depth relative to the wrist, on the
pixel scale of x and y at the hand (metres times the hand's image scale, the pixels of ``keypoints_2d`` per metre
of ``keypoints_3d``), so that x, y, z form one isotropic space for pose-format's 3D hand tools. C: the detector's
score (1 for a box the user gave); an absent hand has C = 0 and is masked. The header has the frame size; the body
the video's fps (1 for images).

With a *base* (a user's MediaPipe-Holistic ``.pose`` of the same video), the file written is the base with the
data of its two hand components replaced by HaMeR's, frame by frame: every other component is left as it was.
Holistic's own hand z is MediaPipe's normalized value, not pixels; the replaced hands use the convention above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path, naming
from ..outputs import Frame
from ..results import Hand

HAND_POINTS = (
    "WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP",
    "INDEX_FINGER_MCP", "INDEX_FINGER_PIP", "INDEX_FINGER_DIP", "INDEX_FINGER_TIP",
    "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP", "MIDDLE_FINGER_TIP",
    "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
    "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP",
)
# MediaPipe's HAND_CONNECTIONS: the palm, then each finger from its base.
HAND_LIMBS = ((0, 1), (0, 5), (9, 13), (13, 17), (5, 9), (0, 17), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8),
              (9, 10), (10, 11), (11, 12), (13, 14), (14, 15), (15, 16), (17, 18), (18, 19), (19, 20))
COMPONENTS = {"Left": "LEFT_HAND_LANDMARKS", "Right": "RIGHT_HAND_LANDMARKS"}  # Holistic's order: left first


def _pose_format() -> Any:
    try:
        import pose_format
    except ImportError:
        raise ValueError("--formats pose needs the pose-format package: pip install pose-format") from None
    return pose_format


def hand_points(hand: Hand) -> tuple[np.ndarray, float]:
    """(21, 3) x, y pixels and z relative depth in pixels (see the module docstring), and the confidence."""
    depth = hand.keypoints_3d[:, 2].astype(np.float64)
    z = (depth - depth[0]) * _pixels_per_metre(hand)
    points = np.concatenate([hand.keypoints_2d.astype(np.float64), z[:, None]], axis=1)
    return points.astype(np.float32), 1.0 if np.isnan(hand.score) else float(hand.score)


def _pixels_per_metre(hand: Hand) -> float:
    """The image scale at the hand's wrist: pixels of keypoints_2d per metre of keypoints_3d (least squares)."""
    xy = hand.keypoints_3d[:, :2].astype(np.float64)
    uv = hand.keypoints_2d.astype(np.float64)
    dxy, duv = xy - xy.mean(axis=0), uv - uv.mean(axis=0)
    return float((dxy * duv).sum() / max((dxy * dxy).sum(), 1e-12))


def frames_data(frames: list[tuple[int, dict[str, tuple[np.ndarray, float]]]], count: int
                ) -> tuple[np.ma.MaskedArray, np.ndarray]:
    """(F, 1, 42, 3) masked data and (F, 1, 42) confidence: left hand points 0-20, right 21-41."""
    data = np.zeros((count, 1, 42, 3), dtype=np.float32)
    confidence = np.zeros((count, 1, 42), dtype=np.float32)
    for row, hands in frames:
        for slot, label in enumerate(COMPONENTS):
            if label in hands:
                points, score = hands[label]
                data[row, 0, 21 * slot:21 * (slot + 1)] = points
                confidence[row, 0, 21 * slot:21 * (slot + 1)] = score
    mask = np.repeat((confidence == 0)[..., None], 3, axis=-1)
    return np.ma.masked_array(data, mask=mask), confidence


class PoseWriter:
    """Writes ``path`` (a .pose file) at the end of the input; on its own header, or into a Holistic ``base``."""

    def __init__(self, path: Path, fps: float | None, base: Path | None = None) -> None:
        _pose_format()
        self.path, self.fps, self.base = Path(path), fps, base
        self._rows: list[tuple[int, dict[str, tuple[np.ndarray, float]]]] = []
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> PoseWriter:
        return self

    def add(self, frame: Frame) -> None:
        self._size = self._size or frame.result.image_size
        hands = {h.label: hand_points(h) for h in frame.result.hands if h.reconstructed}
        self._rows.append((len(self._rows), hands))

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            return
        pose = self._upgraded_base() if self.base is not None else self._new_pose()
        with naming(self.path), atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            pose.write(f)

    def _new_pose(self) -> Any:
        from pose_format import Pose
        from pose_format.numpy import NumPyPoseBody
        from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
        from pose_format.utils.openpose import hand_colors

        width, height = self._size or (0, 0)
        components = [PoseHeaderComponent(name=name, points=list(HAND_POINTS), limbs=list(HAND_LIMBS),
                                          colors=list(hand_colors), point_format="XYZC")
                      for name in COMPONENTS.values()]
        header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width, height, 0), components=components)
        data, confidence = frames_data(self._rows, len(self._rows))
        return Pose(header, NumPyPoseBody(fps=float(self.fps or 1.0), data=data, confidence=confidence))

    def _upgraded_base(self) -> Any:
        from pose_format import Pose

        try:
            pose = Pose.read(self.base.read_bytes())
        except Exception as exc:  # noqa: BLE001 (any damage a reader of a foreign file can meet: the unit fails)
            raise ValueError(f"--pose-base {self.base}: cannot read it as a .pose file ({type(exc).__name__}: "
                             f"{exc})") from None
        names = [c.name for c in pose.header.components]
        frames, people, points, dims = pose.body.data.shape
        problems = [f"it has no {n} component" for n in COMPONENTS.values() if n not in names]
        if not problems and any(len(pose.header.components[names.index(n)].points) != 21
                                for n in COMPONENTS.values()):
            problems.append("its hand components do not have 21 points")
        if frames != len(self._rows):
            problems.append(f"it has {frames} frames, the video {len(self._rows)}")
        if dims != 3:
            problems.append(f"its points have {dims} dimensions, not 3 (XYZC)")
        if problems:
            raise ValueError(f"--pose-base {self.base}: " + "; ".join(problems))
        ours, confidence = frames_data(self._rows, frames)
        data, conf = pose.body.data, pose.body.confidence
        for slot, name in enumerate(COMPONENTS.values()):
            start = pose.header.get_point_index(name, HAND_POINTS[0])
            data[:, 0, start:start + 21] = ours[:, 0, 21 * slot:21 * (slot + 1)]
            conf[:, 0, start:start + 21] = confidence[:, 0, 21 * slot:21 * (slot + 1)]
            data.data[:, 0, start:start + 21] = ours.data[:, 0, 21 * slot:21 * (slot + 1)]
        return pose
