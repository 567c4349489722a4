"""Drawing hands on an image: :func:`draw` in one of :data:`STYLES`, each hand's box and label with its MANO mesh
(:mod:`hamer.mesh_render`) or its 21-joint skeleton, an optional legend and side view.

Joints in OpenPose order: wrist 0, thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20; each finger has its
own colour, the box and label the hand's (Right orange, Left blue).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .mesh_render import MESH_COLORS, SIDE_VIEW_DEG, draw_meshes
from .results import FrameResult, Hand

STYLES = ("mesh", "skeleton", "boxes")

FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
HAND_EDGES = tuple((0 if i == 0 else finger[i - 1], finger[i]) for finger in FINGERS for i in range(4))
FINGER_COLORS = ((60, 60, 255), (0, 220, 255), (60, 220, 60), (255, 200, 0), (255, 60, 200))  # BGR
LABEL_COLORS = {"Right": (0, 140, 255), "Left": (255, 120, 0)}  # BGR
WRIST_COLOR = (255, 255, 255)


def draw(img_bgr: np.ndarray, result: FrameResult, style: str = "mesh", *, faces: np.ndarray | None = None,
         alpha: float = 0.85, legend: bool = False, side_view: bool = False) -> np.ndarray:
    """A new uint8 BGR image of ``img_bgr``'s size with the hands of ``result`` drawn.

    Args:
        img_bgr: the uint8 (H, W, 3) BGR image ``result`` is of.
        result: the frame's hands.
        style: "mesh": each reconstructed hand's MANO mesh (``vertices + cam_t`` seen by ``result.camera``,
            z-buffered, shaded, Right orange, Left light blue) with boxes and labels; "skeleton": boxes, labels
            and 21-joint skeletons; "boxes": boxes and labels only.
        faces: (1538, 3) MANO triangles (``HAMER.faces``), needed by "mesh" when a hand was reconstructed.
        alpha: the mesh's opacity in [0, 1].
        legend: also a legend in the top-left corner (the finger colours, or the hand sides' colours).
        side_view: "mesh" only: the image is followed on the right by a white panel of the same size with each
            mesh turned 90 degrees about the vertical axis (HaMeR demo's side view); the image is then twice as
            wide.
    Raises:
        ValueError: an unknown style, an image that is not uint8 BGR, missing ``faces``, ``side_view`` without
            "mesh".
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    img = np.asarray(img_bgr)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img_bgr must be a uint8 (H, W, 3) BGR image, got {img.dtype} {img.shape}")
    if side_view and style != "mesh":
        raise ValueError(f"side_view needs style='mesh', got style={style!r}")
    meshes = [h for h in result.hands if h.reconstructed and h.vertices is not None and h.cam_t is not None]
    if style == "mesh" and meshes and faces is None:
        raise ValueError("style='mesh' needs the MANO triangles: faces=HAMER(...).faces (or use HAMER.draw)")
    out = img.copy()
    if style == "mesh" and meshes and result.camera is not None:
        draw_meshes(out, meshes, faces, result.camera, alpha, inplace=True)
    draw_hands(out, result.hands, skeleton=style == "skeleton", inplace=True)
    if legend:
        _legend(out, style)
    if side_view:
        panel = np.full_like(img, 255)
        if meshes and result.camera is not None:
            draw_meshes(panel, meshes, faces, result.camera, 1.0, turn_deg=SIDE_VIEW_DEG, inplace=True)
        out = np.concatenate([out, panel], axis=1)
    return out


def draw_hands(img_bgr: np.ndarray, hands: Sequence[Hand], skeleton: bool = True, inplace: bool = False
               ) -> np.ndarray:
    """The uint8 BGR image with the hands drawn (a copy unless ``inplace``): box, "label score" (and MediaPipe's
    label when the held one differs), and with ``skeleton`` the bones of ``keypoints_2d`` (pixels) when present."""
    out = img_bgr if inplace else np.ascontiguousarray(img_bgr).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for hand in hands:
        color = LABEL_COLORS[hand.label]
        x1, y1, x2, y2 = (int(round(v)) for v in hand.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        _label(out, caption(hand), (x1, y1), color, thick)
        if skeleton and hand.keypoints_2d is not None:
            _skeleton(out, hand.keypoints_2d, thick)
    return out


def caption(hand: Hand) -> str:
    """The hand's label: "label score" (and MediaPipe's label when the held one differs)."""
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


def _legend(img: np.ndarray, style: str) -> None:
    """A legend in the top-left corner: the fingers' colours (skeleton) or the hand sides' (mesh, boxes)."""
    if style == "skeleton":
        entries = [("wrist", WRIST_COLOR)] + list(zip(("thumb", "index", "middle", "ring", "pinky"), FINGER_COLORS,
                                                      strict=True))
    else:
        colors = MESH_COLORS if style == "mesh" else LABEL_COLORS
        entries = [(f"{side} hand", colors[side]) for side in ("Right", "Left")]
    thick = max(1, round(max(img.shape[:2]) / 400))
    scale = 0.45 * thick
    line = cv2.getTextSize("Hg", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] + 6 * thick
    width = max(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for text, _ in entries)
    x2, y2 = min(img.shape[1], width + line + 6 * thick), min(img.shape[0], line * len(entries) + 4 * thick)
    img[:y2, :x2] = (img[:y2, :x2] * 0.4).astype(np.uint8)  # a dark band under the legend
    for i, (text, color) in enumerate(entries):
        top = 2 * thick + i * line
        swatch = line - 4 * thick
        cv2.rectangle(img, (2 * thick, top), (2 * thick + swatch, top + swatch), color, cv2.FILLED)
        cv2.putText(img, text, (4 * thick + swatch, top + swatch), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thick, cv2.LINE_AA)
