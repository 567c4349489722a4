"""One frame through HaMeR: labelled boxes -> crops -> network -> joints in the image.

Data flows one way: :func:`check_boxes` validates the user's boxes, :func:`make_inputs` crops and normalizes them
into one batch, a runtime runs the network, :func:`hand_outputs` un-mirrors left hands and places every hand in the
full image with the original demo's camera.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from yacs.config import CfgNode

from .camera import cam_crop_to_full, perspective_projection
from .cropping import CropParams, box_to_crop, crop_images, normalize_patches

LABELS = ("Right", "Left")


def check_boxes(boxes: Mapping[str, Sequence[float]], image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{"Right"|"Left": [x1, y1, x2, y2]}`` in pixels -> float32 (4,) arrays; ValueError naming a bad one.

    A box may extend past the image (the crop's border is zero) but must overlap it.
    """
    if not isinstance(boxes, Mapping):
        raise ValueError(f"boxes must be a dict {{'Right'|'Left': [x1, y1, x2, y2]}}, got {type(boxes).__name__}")
    checked = {}
    for label, box in boxes.items():
        if label not in LABELS:
            raise ValueError(f"hand label must be 'Right' or 'Left', got {label!r}")
        try:
            arr = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{label} box must be 4 numbers [x1, y1, x2, y2], got {box!r}") from None
        if arr.shape != (4,):
            raise ValueError(f"{label} box must be 4 numbers [x1, y1, x2, y2], got {arr.size}")
        problem = box_problem(arr, image_shape)
        if problem:
            raise ValueError(f"{label} box {arr.tolist()} {problem}")
        checked[label] = arr.astype(np.float32)
    return checked


def box_problem(box: np.ndarray, image_shape: tuple[int, ...]) -> str | None:
    """Why an (x1, y1, x2, y2) pixel box cannot be cropped from an image of ``image_shape``, or None if it can."""
    height, width = image_shape[:2]
    if not np.isfinite(box).all():
        return "has a NaN or infinite coordinate"
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return "is inverted or has zero size (need x2 > x1, y2 > y1)"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"lies entirely outside the {width}x{height} image"
    return None


def make_inputs(img_bgr: np.ndarray, boxes: np.ndarray, rights: np.ndarray, cfg: CfgNode,
                rescale_factor: float) -> tuple[np.ndarray, list[CropParams]]:
    """(N, 4) boxes, (N,) right flags -> (N, 3, S, S) network input and the crops' parameters."""
    size = int(cfg.MODEL.IMAGE_SIZE)
    bbox_shape = tuple(cfg.MODEL.BBOX_SHAPE)
    crops = [box_to_crop(b, bool(r), rescale_factor, bbox_shape) for b, r in zip(boxes, rights, strict=True)]
    patches = crop_images(img_bgr, crops, size)
    return normalize_patches(patches, cfg.MODEL.IMAGE_MEAN, cfg.MODEL.IMAGE_STD), crops


def hand_outputs(net: Mapping[str, np.ndarray], rights: np.ndarray, crops: Sequence[CropParams],
                 image_shape: tuple[int, ...], cfg: CfgNode) -> dict[str, np.ndarray]:
    """Un-mirrored joints and vertices, the full-image camera and the joints projected into the image.

    Returns ``keypoints_3d`` (N,21,3) and ``vertices`` (N,778,3) in metres (MANO frame, x of left hands negated
    back), ``cam_t_full`` (N,3) metres, ``keypoints_2d`` (N,21,2) image pixels, ``box_center`` (N,2) pixels,
    ``box_size`` (N,) pixels, ``focal_length_full`` (scalar, pixels).
    """
    height, width = image_shape[:2]
    sign = 2 * rights.astype(np.float32) - 1
    unmirror = np.ones((len(sign), 1, 3), dtype=np.float32)
    unmirror[:, 0, 0] = sign
    keypoints_3d = net["pred_keypoints_3d"] * unmirror
    vertices = net["pred_vertices"] * unmirror

    pred_cam = torch.from_numpy(net["pred_cam"].copy())
    pred_cam[:, 1] = torch.from_numpy(sign) * pred_cam[:, 1]
    box_center = torch.from_numpy(np.stack([c.center for c in crops]).astype(np.float32))
    box_size = torch.tensor([c.size for c in crops], dtype=torch.float32)
    img_size = torch.tensor([[width, height]] * len(crops), dtype=torch.float32)
    focal = float(cfg.EXTRA.FOCAL_LENGTH) / float(cfg.MODEL.IMAGE_SIZE) * img_size.max()
    cam_t_full = cam_crop_to_full(pred_cam, box_center, box_size, img_size, focal)
    keypoints_2d = perspective_projection(
        torch.from_numpy(keypoints_3d), cam_t_full, focal.expand(len(crops), 2), img_size / 2.0
    )
    return {
        "keypoints_3d": keypoints_3d,
        "vertices": vertices,
        "cam_t_full": cam_t_full.numpy(),
        "keypoints_2d": keypoints_2d.numpy(),
        "box_center": box_center.numpy(),
        "box_size": box_size.numpy(),
        "focal_length_full": np.float32(focal),
    }
