"""Input image checks: every entry point takes an OpenCV-style uint8 image and gets 3-channel BGR."""

from __future__ import annotations

import cv2
import numpy as np


def as_bgr(img: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) BGR image from a uint8 BGR, BGRA or grayscale one; ValueError naming what is wrong."""
    if img is None:
        raise ValueError("image is None (did cv2.imread fail to read the file?)")
    if not isinstance(img, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(img).__name__}")
    if img.size == 0:
        raise ValueError(f"image is empty (shape {img.shape})")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (as from cv2.imread), got {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) BGR or (H, W, 4) BGRA, got shape {img.shape}")
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img
