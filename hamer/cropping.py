"""HaMeR's hand crop, as its demo (``ViTDetDataset``) makes it, computed on the needed region only.

Box -> centre and size: ``size = rescale_factor * max(h, 4/3 * w)`` (the box expanded to the 192:256 aspect ratio
of the backbone, then its longer side). Left hands are mirrored (``c_x -> W - c_x - 1`` on the flipped image).
When ``size / 256 / 2 > 1.1`` the image is blurred first, as the original does with
``skimage.filters.gaussian(sigma=(size/512 - 1)/2, mode='nearest', truncate=4)``; here the same separable kernel
runs with OpenCV over the region the warp reads. The warp is bilinear to 256x256 with a zero border.
Patches are BGR as the image; :func:`normalize_patches` makes the network input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

TRUNCATE = 4.0  # skimage/scipy default: kernel radius = int(TRUNCATE * sigma + 0.5)
# Crops whose blur or region exceed these run on a shrunk region (see reduction_factor); all others are exact.
MAX_EXACT_SIGMA = 16.0  # pixels: a crop side of about 17,000 px
MAX_EXACT_REGION = 4096 * 4096  # pixels read (a float64 copy of them is 400 MB)
REDUCED_SIGMA = 8.0  # pixels of the shrunk region


@dataclass(frozen=True)
class CropParams:
    """Where a crop comes from: centre (2,) and side length in image pixels (float32), mirrored or not."""

    center: np.ndarray
    size: float
    flip: bool


def box_to_crop(box: np.ndarray, right: bool, rescale_factor: float = 2.0,
                bbox_shape: tuple[int, int] = (192, 256)) -> CropParams:
    """HaMeR's crop of an (x1, y1, x2, y2) pixel box, in the original's float32 arithmetic."""
    box = np.asarray(box, dtype=np.float32)
    center = (box[2:4] + box[0:2]) / 2.0
    scale = rescale_factor * (box[2:4] - box[0:2]) / 200.0
    w, h = scale * 200
    w_t, h_t = bbox_shape
    if h / w < h_t / w_t:
        w_new, h_new = w, max(w * h_t / w_t, h)
    else:
        w_new, h_new = max(h * w_t / h_t, w), h
    return CropParams(center=center, size=float(np.float32(max(w_new, h_new))), flip=not right)


def blur_sigma(size: float, patch_size: int = 256) -> float:
    """Anti-alias sigma for a crop of ``size`` pixels, 0 when the original does not blur."""
    factor = size / patch_size / 2.0
    return (factor - 1) / 2 if factor > 1.1 else 0.0


def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1D Gaussian (radius ``int(truncate * sigma + 0.5)``, normalized), float64."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * x**2)
    return kernel / kernel.sum()


def crop_transform(center_x: float, center_y: float, size: float, patch_size: int) -> np.ndarray:
    """The original's (2, 3) affine map from image pixels to patch pixels (``gen_trans_from_patch_cv``, no rotation)."""
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = (center_x, center_y)
    src[1] = src[0] + np.array([0, size * 0.5], dtype=np.float32)
    src[2] = src[0] + np.array([size * 0.5, 0], dtype=np.float32)
    half = patch_size * 0.5
    dst = np.array([[half, half], [half, patch_size], [patch_size, half]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def crop_images(img: np.ndarray, crops: list[CropParams], patch_size: int = 256) -> list[np.ndarray]:
    """(patch, patch, 3) BGR crops of a uint8 BGR image; uint8, or float64 where blurred (as in the original).

    Unblurred crops warp the whole (mirrored, for left hands) image, as the original does, so that OpenCV's
    fixed-point sampling gives the same pixels; the warp only reads the pixels it needs, and the image is mirrored
    at most once per call. Blurred crops blur only the region the warp reads plus the kernel radius, which equals
    blurring the whole image with ``mode='nearest'``.
    """
    mirrored = np.ascontiguousarray(img[:, ::-1]) if any(c.flip for c in crops) else None
    return [_crop(mirrored if c.flip else img, c, patch_size) for c in crops]


def _crop(img: np.ndarray, crop: CropParams, patch_size: int) -> np.ndarray:
    """One crop of ``img`` (already mirrored when ``crop.flip``)."""
    height, width = img.shape[:2]
    cx, cy = float(crop.center[0]), float(crop.center[1])
    if crop.flip:
        cx = width - cx - 1
    trans = crop_transform(cx, cy, crop.size, patch_size)
    sigma = blur_sigma(crop.size, patch_size)
    if sigma == 0:  # OpenCV's defaults are the original's settings: bilinear, zero border
        return cv2.warpAffine(img, trans, (patch_size, patch_size))

    inverse = cv2.invertAffineTransform(trans)
    radius = int(TRUNCATE * sigma + 0.5)
    corners = inverse @ np.array([[0, patch_size, 0, patch_size], [0, 0, patch_size, patch_size], [1, 1, 1, 1]])
    x0 = max(int(np.floor(corners[0].min())) - 1 - radius, 0)
    x1 = min(int(np.ceil(corners[0].max())) + 2 + radius, width)
    y0 = max(int(np.floor(corners[1].min())) - 1 - radius, 0)
    y1 = min(int(np.ceil(corners[1].max())) + 2 + radius, height)
    if x0 >= x1 or y0 >= y1:
        return np.zeros((patch_size, patch_size, 3))  # float64, as a blurred crop
    factor = reduction_factor(sigma, (x1 - x0) * (y1 - y0))
    if factor > 1:
        return _reduced_crop(img, (x0, y0, x1, y1), inverse, sigma, factor, patch_size)
    kernel = gaussian_kernel(sigma)
    region = cv2.sepFilter2D(img[y0:y1, x0:x1].astype(np.float64), cv2.CV_64F, kernel, kernel,
                             borderType=cv2.BORDER_REPLICATE)
    inverse[:, 2] -= (x0, y0)
    return cv2.warpAffine(region, inverse, (patch_size, patch_size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _reduced_crop(img: np.ndarray, bounds: tuple[int, int, int, int], inverse: np.ndarray, sigma: float,
                  factor: int, patch_size: int) -> np.ndarray:
    """The blurred crop of a huge box, computed on the region ``bounds`` = (x0, y0, x1, y1) of ``img`` (the pixels
    the crop reads) shrunk about ``factor`` times.

    The region is area-averaged into blocks that tile it exactly, so its edges stay in place; it is blurred with
    ``sigma`` in shrunk pixels and sampled with the crop's map; each sample is then weighted by the share of its
    bilinear footprint inside the image, as the exact path's zero border weights it.
    """
    x0, y0, x1, y1 = bounds
    small = (-(-(x1 - x0) // factor), -(-(y1 - y0) // factor))
    scale = np.array([(x1 - x0) / small[0], (y1 - y0) / small[1]])
    shrunk = cv2.resize(img[y0:y1, x0:x1], small, interpolation=cv2.INTER_AREA)
    kernel_x, kernel_y = gaussian_kernel(sigma / scale[0]), gaussian_kernel(sigma / scale[1])
    blurred = cv2.sepFilter2D(shrunk.astype(np.float64), cv2.CV_64F, kernel_x, kernel_y,
                              borderType=cv2.BORDER_REPLICATE)
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    local = local / scale[:, None]
    local[:, 2] += 0.5 / scale - 0.5
    patch = cv2.warpAffine(blurred, local, (patch_size, patch_size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    grid = np.arange(patch_size, dtype=np.float64)
    height, width = img.shape[:2]
    xs = inverse[0, 0] * grid + inverse[0, 2]  # the crop has no rotation: x depends on the column only
    ys = inverse[1, 1] * grid + inverse[1, 2]
    inside_x = np.clip(xs + 1, 0, 1) * np.clip(width - xs, 0, 1)
    inside_y = np.clip(ys + 1, 0, 1) * np.clip(height - ys, 0, 1)
    return patch * (inside_y[:, None] * inside_x[None, :])[:, :, None]


def reduction_factor(sigma: float, region_pixels: int) -> int:
    """1 (the exact path) for ordinary crops; else the integer factor a huge crop's region is shrunk by first.

    A crop is huge when its blur is wider than :data:`MAX_EXACT_SIGMA` or the region it reads has more than
    :data:`MAX_EXACT_REGION` pixels. The factor brings the blur to about :data:`REDUCED_SIGMA` pixels and the
    region under :data:`MAX_EXACT_REGION`, so time and memory are bounded by the crop and the image, not the box.
    """
    if sigma <= MAX_EXACT_SIGMA and region_pixels <= MAX_EXACT_REGION:
        return 1
    by_sigma = math.ceil(sigma / REDUCED_SIGMA)
    by_region = math.ceil(math.sqrt(region_pixels / MAX_EXACT_REGION))
    return max(2, by_sigma, by_region)


def normalize_patches(patches: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """BGR patches -> (N, 3, S, S) float32 RGB, ``(x - 255 mean) / (255 std)`` per channel (mean, std in [0, 1])."""
    batch = np.stack([p[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) for p in patches])
    mean = 255.0 * np.asarray(mean, dtype=np.float64).reshape(1, 3, 1, 1)  # float64 whatever the config's type
    std = 255.0 * np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
    return ((batch - mean) / std).astype(np.float32)
