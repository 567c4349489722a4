"""Drawing hands on an image: each hand's box, label and 21-joint skeleton.

Joints in OpenPose order: wrist 0, thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20; each finger has its
own colour, the box and label the hand's (Right orange, Left blue).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .results import Hand

FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
HAND_EDGES = tuple((0 if i == 0 else finger[i - 1], finger[i]) for finger in FINGERS for i in range(4))
FINGER_COLORS = ((60, 60, 255), (0, 220, 255), (60, 220, 60), (255, 200, 0), (255, 60, 200))  # BGR
LABEL_COLORS = {"Right": (0, 140, 255), "Left": (255, 120, 0)}  # BGR
WRIST_COLOR = (255, 255, 255)


def draw_hands(img_bgr: np.ndarray, hands: Sequence[Hand]) -> np.ndarray:
    """A copy of a uint8 BGR image with the hands drawn: box, "label score" (and MediaPipe's label when the
    held one differs), and the skeleton of ``keypoints_2d`` (pixels) when present."""
    out = np.ascontiguousarray(img_bgr).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for hand in hands:
        color = LABEL_COLORS[hand.label]
        x1, y1, x2, y2 = (int(round(v)) for v in hand.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        _label(out, _caption(hand), (x1, y1), color, thick)
        if hand.keypoints_2d is not None:
            _skeleton(out, hand.keypoints_2d, thick)
    return out


def _caption(hand: Hand) -> str:
    text = hand.label if np.isnan(hand.score) else f"{hand.label} {hand.score:.2f}"
    if hand.detected_label != hand.label:
        text += f" (MediaPipe: {hand.detected_label})"
    return text


def _label(img: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int], thick: int) -> None:
    """``text`` in white on a ``color`` band just above ``corner`` (below it at the top edge)."""
    scale = 0.45 * thick
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = corner
    x = min(max(x, 0), max(img.shape[1] - w - 2 * thick, 0))  # keep the caption on the image
    y = min(max(y, 0), max(img.shape[0] - h - base - 2 * thick, 0))
    top = y - h - base - 2 * thick if y - h - base - 2 * thick >= 0 else y
    cv2.rectangle(img, (x, top), (x + w + 2 * thick, top + h + base + 2 * thick), color, cv2.FILLED)
    cv2.putText(img, text, (x + thick, top + h + thick), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)


def _skeleton(img: np.ndarray, keypoints_2d: np.ndarray, thick: int) -> None:
    """Bones and joints of (21, 2) pixel points; points that are not finite or far off the image are skipped."""
    limit = 10 * max(img.shape[:2])
    points = [tuple(int(round(v)) for v in p) if np.isfinite(p).all() and np.abs(p).max() < limit else None
              for p in np.asarray(keypoints_2d, dtype=np.float64)]
    for (a, b), color in zip(HAND_EDGES, (c for c in FINGER_COLORS for _ in range(4)), strict=True):
        if points[a] is not None and points[b] is not None:
            cv2.line(img, points[a], points[b], color, thick, cv2.LINE_AA)
    for j, point in enumerate(points):
        if point is not None:
            color = WRIST_COLOR if j == 0 else FINGER_COLORS[(j - 1) // 4]
            cv2.circle(img, point, thick + 1, color, cv2.FILLED, cv2.LINE_AA)
