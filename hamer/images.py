"""Input images: every entry point takes a uint8 image (OpenCV's BGR by default) and gets 3-channel BGR.

Files are read through Python (bytes -> ``cv2.imdecode``): OpenCV's own file functions crash the process on a path
that is not valid UTF-8 (a name with a stray byte, common on old archives), so no path is ever handed to them
as is; :func:`opencv_path` gives OpenCV's video functions a name they can take.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

COLORS = ("BGR", "RGB")

# File suffixes read as images (OpenCV's readers).
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm",
    ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".avif",
})


def as_bgr(img: Any, color: str = "BGR") -> np.ndarray:
    """A uint8 (H, W, 3) BGR image; ValueError naming what is wrong.

    Args:
        img: a uint8 numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) whose channels are in ``color`` order
            (plus alpha), or a PIL image (its own mode says its channels; ``color`` is then ignored).
        color: "BGR" (OpenCV's ``imread``, the default) or "RGB" (PIL, matplotlib, imageio, torchvision).
    """
    if color not in COLORS:
        raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
    if img is None:
        raise ValueError("image is None (did cv2.imread fail to read the file?)")
    if _is_pil(img):
        return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2BGR)
    if not isinstance(img, np.ndarray):
        raise ValueError(f"image must be a numpy array or a PIL image, got {type(img).__name__}")
    if img.size == 0:
        raise ValueError(f"image is empty (shape {img.shape})")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (as from cv2.imread), got {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR if color == "BGR" else cv2.COLOR_RGBA2BGR)
    return img if color == "BGR" else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def _is_pil(img: Any) -> bool:
    """Whether ``img`` is a PIL image (without importing PIL)."""
    return type(img).__module__.startswith("PIL.") and hasattr(img, "convert")


def read_image(path: os.PathLike | str) -> np.ndarray | None:
    """The uint8 BGR image in file ``path`` (any name, as bytes -> ``cv2.imdecode``), or None if it cannot be
    decoded. OSError when the file cannot be read."""
    data = np.fromfile(Path(path), dtype=np.uint8)
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@contextmanager
def opencv_path(path: os.PathLike | str) -> Iterator[str]:
    """A name of ``path`` that OpenCV's file functions can take: the path itself when it is valid UTF-8, else a
    symbolic link to it with a plain name in a temporary folder (removed on exit)."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="hamer-") as tmp:
            link = os.path.join(tmp, "input" + "".join(Path(name.encode("utf-8", "replace").decode()).suffixes[-1:]))
            os.symlink(os.path.abspath(name), link)
            yield link
        return
    yield name
