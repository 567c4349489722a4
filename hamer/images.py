"""Input images: every entry point takes a uint8 image (OpenCV's BGR by default) and gets 3-channel BGR.

Files are read through Python (bytes -> ``cv2.imdecode``): OpenCV's own file functions crash the process on a path
that is not valid UTF-8 (a name with a stray byte, common on old archives), so no path is ever handed to them
as is; :func:`opencv_path` gives OpenCV's video functions a name they can take.

Image files are checked before they are decoded (:func:`read_image`): a file over :func:`max_image_bytes` is
refused unread, and one whose header (read by Pillow's format plugins) gives more than :data:`MAX_IMAGE_PIXELS`
pixels is refused undecoded, so that a small file cannot expand into gigabytes (a 124 kB PNG holds a
32000 x 32000 image: 3 GB decoded).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .sizes import format_bytes
from .storage import open_input, redact

COLORS = ("BGR", "RGB")

# The most pixels (width x height) an image file may have; settable (``hamer run --max-image-pixels``). 200 million
# admits every single-shot camera: phones' 200 MP modes (16320 x 12240 = 199.8 million), Phase One's IQ4 150MP (151
# million), Fujifilm's GFX100 (102 million); and a 4x5-inch film scan at 3000 dpi (180 million). It decodes to
# 600 MB of BGR (a run on one such image: 2.8 GB peak, benchmarks/results/image_limits.md).
MAX_IMAGE_PIXELS = 200_000_000
# max_image_bytes: 8 bytes a pixel (16-bit RGBA stored uncompressed, the most an image of 8- or 16-bit channels
# takes) plus 16 MB of metadata (EXIF, ICC profiles, previews).
BYTES_PER_PIXEL = 8
METADATA_BYTES = 16_000_000
# Pillow reads at most this many bytes of a file before it knows its format (as Image.open).
_PREFIX = 16

# File suffixes read as images (OpenCV's readers; read_image refuses .exr, .hdr and .pic, whose size Pillow cannot
# read first, with a message naming the file rather than leaving them out unsaid).
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


class ImageError(ValueError):
    """An image file refused or not decodable; the message names the file and why."""


def max_image_bytes(max_pixels: int) -> int:
    """The largest file :func:`read_image` reads for images of at most ``max_pixels`` pixels."""
    return BYTES_PER_PIXEL * max_pixels + METADATA_BYTES


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in the header of the image file ``data``, read by Pillow's format plugins (JPEG, PNG, WebP,
    BMP, TIFF, JPEG 2000, AVIF, PNM...) without decoding a pixel; None if no plugin knows the format.

    The plugins are asked directly rather than through ``PIL.Image.open``, which adds Pillow's own pixel limit (a
    warning over 89 million pixels, an error over 179 million); :data:`MAX_IMAGE_PIXELS` decides here. Readers
    that check Pillow's limit themselves as they open (WebP's, which allocates the canvas; GIF's, for a frame) still
    raise ``PIL.Image.DecompressionBombError`` over 179 million pixels.
    """
    Image.init()
    prefix = data[:_PREFIX]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            if accept is not None:
                known = accept(prefix)
                if not known or isinstance(known, str):  # a string: "maybe, with a warning"; Image.open skips it
                    continue
            with factory(io.BytesIO(data), "") as img:
                return img.size
        except Image.DecompressionBombError:
            raise
        except Exception:  # noqa: BLE001 (a reader failing on these bytes, whatever it raises: the next is asked)
            continue
    return None


def read_image(path: os.PathLike | str, max_pixels: int | None = None) -> np.ndarray:
    """The uint8 (H, W, 3) BGR image in file ``path`` (any name, or a URL: :mod:`hamer.storage`; as bytes ->
    ``cv2.imdecode``).

    Refused before decoding, with an :class:`ImageError` naming the file: a file over
    ``max_image_bytes(max_pixels)`` (not read), one whose header is not one Pillow reads (not an image, damaged,
    or a format such as OpenEXR or Radiance HDR whose size cannot be checked first), or one of more than
    ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`, read when called). ImageError too when OpenCV cannot
    decode it; OSError when the file cannot be read.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    most = max_image_bytes(limit)
    with open_input(path) as (f, size):
        data = f.read(most + 1) if size <= most else b""
    path = redact(os.fspath(path))
    if size > most or len(data) > most:
        raise ImageError(f"{path}: {format_bytes(max(size, len(data)))}, more than an image of at most {limit} "
                         f"pixels takes ({format_bytes(most)}): not read")
    if not data:
        raise ImageError(f"{path}: empty file")
    try:
        dims = header_size(data)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked by its WebP and GIF readers
        raise ImageError(f"{path}: {exc}: not decoded") from None
    if dims is None:
        raise ImageError(f"{path}: not an image whose size can be read from its header (damaged, not an image, or "
                         "a format such as OpenEXR or Radiance HDR that is not read)")
    width, height = dims
    if width * height > limit:
        raise ImageError(f"{path}: {width} x {height} = {width * height} pixels, over the limit of {limit}: "
                         "not decoded")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"{path}: OpenCV cannot decode it ({str(exc).strip().splitlines()[-1]})") from None
    if img is None:
        raise ImageError(f"{path}: OpenCV cannot decode it (damaged or truncated?)")
    return img


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
