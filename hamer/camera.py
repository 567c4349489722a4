"""Camera formulas of HaMeR: crop camera -> full-image camera, and pinhole projection.

Frames: camera coordinates in metres, x right, y down, z forward (OpenCV convention); image points in pixels.
The crop-camera conversions take numpy arrays (no torch: a run on ONNX Runtime never loads it) and compute in
their dtype, in the original's order of operations: float32 arrays give the original's float32 torch results
bit for bit. :func:`perspective_projection` runs inside the network, on torch tensors.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def perspective_projection(points: torch.Tensor, translation: torch.Tensor, focal_length: torch.Tensor,
                           camera_center: torch.Tensor) -> torch.Tensor:
    """Project (B, N, 3) points, translated by (B, 3), with (B, 2) focal lengths and centres -> (B, N, 2)."""
    points = points + translation.unsqueeze(1)
    projected = points[..., :2] / points[..., 2:]
    return projected * focal_length.unsqueeze(1) + camera_center.unsqueeze(1)


def cam_crop_to_full(cam_bbox: np.ndarray, box_center: np.ndarray, box_size: np.ndarray, img_size: np.ndarray,
                     focal_length: np.ndarray | np.floating) -> np.ndarray:
    """HaMeR demo's conversion of the crop's weak-perspective camera to a full-image translation.

    cam_bbox (B,3) [s, tx, ty] (tx already un-mirrored for left hands); box_center (B,2) and box_size (B,) pixels;
    img_size (B,2) [W, H]; focal_length scalar or (B,) pixels. Returns (B,3) translation in metres for a camera with
    that focal length and the principal point at the image centre.
    """
    img_w, img_h = img_size[:, 0], img_size[:, 1]
    cx, cy, b = box_center[:, 0], box_center[:, 1], box_size
    w_2, h_2 = img_w / 2.0, img_h / 2.0
    bs = b * cam_bbox[:, 0] + 1e-9
    tz = 2 * focal_length / bs
    tx = (2 * (cx - w_2) / bs) + cam_bbox[:, 1]
    ty = (2 * (cy - h_2) / bs) + cam_bbox[:, 2]
    return np.stack([tx, ty, tz], axis=-1)


def cam_crop_to_pinhole(cam_bbox: np.ndarray, box_center: np.ndarray, box_size: np.ndarray, fx: float, fy: float,
                        cx: float, cy: float) -> np.ndarray:
    """The crop's weak-perspective camera as a translation for a pinhole camera (fx, fy, cx, cy pixels).

    cam_bbox (B,3) ``[s, tx, ty]`` (tx un-mirrored); box_center (B,2), box_size (B,) pixels. Under the crop
    camera, a hand point X (metres) lands at pixel ``box_center + box_size * s / 2 * (X + [tx, ty])``. Under the
    pinhole camera at depth ``tz`` it lands at ``[cx, cy] + [fx, fy] * (X + t) / tz``. Matching scale and position:

        tz = 2 f / (box_size * s),  f = sqrt(fx * fy)
        t_x = tz (box_center_x - cx + box_size s tx / 2) / fx,   t_y = tz (box_center_y - cy + box_size s ty / 2) / fy

    The hand's origin lands on the crop's pixel exactly; with ``fx = fy`` the scale matches too (``t_x = tx +
    tz (box_center_x - cx) / fx``); with ``fx != fy`` one depth cannot match both axes, and the geometric mean
    keeps the hand's image area. ``fx = fy = f``, ``(cx, cy)`` the image centre gives
    :func:`cam_crop_to_full`. Returns (B,3) metres.
    """
    bs = box_size * cam_bbox[:, 0] + 1e-9
    tz = 2 * math.sqrt(fx * fy) / bs
    tx = tz * (box_center[:, 0] - cx + bs / 2 * cam_bbox[:, 1]) / fx
    ty = tz * (box_center[:, 1] - cy + bs / 2 * cam_bbox[:, 2]) / fy
    return np.stack([tx, ty, tz], axis=-1)

