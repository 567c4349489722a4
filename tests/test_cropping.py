"""The crop is the original demo's: box -> size, flip, blur, warp, normalization."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hamer.cropping import blur_sigma, box_to_crop, crop_images, gaussian_kernel, normalize_patches

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def reference_crop(img: np.ndarray, box: list[float], right: bool, rescale_factor: float = 2.0) -> np.ndarray:
    """The original ViTDetDataset steps on the whole image: flip, skimage blur, warp, BGR->RGB, normalize."""
    skimage_filters = pytest.importorskip("skimage.filters")
    b = np.asarray(box, dtype=np.float32)
    center = (b[2:] + b[:2]) / 2.0
    w, h = rescale_factor * (b[2:] - b[:2]) / 200.0 * 200
    size = max(w * 256 / 192, h) if h / w < 256 / 192 else max(h * 192 / 256, w, h)
    cvimg = img.copy()
    factor = size * 1.0 / 256 / 2.0
    if factor > 1.1:
        cvimg = skimage_filters.gaussian(cvimg, sigma=(factor - 1) / 2, channel_axis=2, preserve_range=True)
    cx, cy = center
    if not right:
        cvimg = cvimg[:, ::-1, :]
        cx = img.shape[1] - cx - 1
    src = np.float32([[cx, cy], [cx, cy + size * 0.5], [cx + size * 0.5, cy]])
    dst = np.float32([[128, 128], [128, 256], [256, 128]])
    patch = cv2.warpAffine(np.ascontiguousarray(cvimg), cv2.getAffineTransform(src, dst), (256, 256),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    chw = patch[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    return ((chw - 255 * np.array(MEAN)[:, None, None]) / (255 * np.array(STD)[:, None, None])).astype(np.float32)


def test_crop_size_is_rescale_times_max_of_h_and_four_thirds_w():
    for box, expected in [([10, 20, 110, 70], 2 * 4 / 3 * 100), ([10, 20, 40, 220], 2 * 200), ([0, 0, 75, 100], 200)]:
        crop = box_to_crop(np.array(box, float), right=True)
        assert crop.size == pytest.approx(expected, rel=1e-6)
    crop = box_to_crop(np.array([10.0, 20.0, 30.0, 60.0]), right=False, rescale_factor=2.5)
    np.testing.assert_array_equal(crop.center, [20.0, 40.0])
    assert crop.size == pytest.approx(2.5 * 40) and crop.flip


def test_blur_threshold_and_kernel_match_skimage_defaults():
    assert blur_sigma(2 * 256 * 1.1) == 0.0
    assert blur_sigma(2 * 256 * 1.5) == pytest.approx(0.25)
    kernel = gaussian_kernel(1.3)
    assert len(kernel) == 2 * int(4 * 1.3 + 0.5) + 1 and kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel[::-1])


@pytest.mark.parametrize("seed", range(6))
def test_crops_equal_the_original_whole_image_procedure(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(120, 700, size=2)
    img = cv2.GaussianBlur(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), (0, 0), 2)
    cases = [
        ([0.2 * width, 0.3 * height, 0.45 * width, 0.5 * height], True),   # small: no blur
        ([0.1 * width, 0.1 * height, 0.5 * width, 0.6 * height], False),   # large: blurred, mirrored
        ([-0.2 * width, 0.6 * height, 0.15 * width, 1.1 * height], False),  # partly outside: zero border
        ([0.7 * width, -0.1 * height, 0.98 * width, 0.2 * height], True),
    ]
    crops = [box_to_crop(np.array(box), right) for box, right in cases]
    ours = normalize_patches(crop_images(img, crops), MEAN, STD)
    for (box, right), patch in zip(cases, ours, strict=True):
        expected = reference_crop(img, box, right)
        np.testing.assert_allclose(patch, expected, rtol=0, atol=1e-5)


def test_left_crop_is_the_mirror_image_crop_of_the_mirrored_image():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    box = np.array([50.0, 60.0, 130.0, 170.0])
    mirrored_box = np.array([400 - 1 - box[2], box[1], 400 - 1 - box[0], box[3]])
    left = crop_images(img, [box_to_crop(box, right=False)])[0]
    right = crop_images(np.ascontiguousarray(img[:, ::-1]), [box_to_crop(mirrored_box, right=True)])[0]
    np.testing.assert_array_equal(left, right)


def test_normalization_is_rgb_imagenet():
    patch = np.zeros((4, 4, 3), np.uint8)
    patch[..., 0] = 255  # blue in BGR
    out = normalize_patches([patch], MEAN, STD)
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 2], (1 - MEAN[2]) / STD[2], rtol=1e-6)  # blue is the last RGB channel
    np.testing.assert_allclose(out[0, 0], -MEAN[0] / STD[0], rtol=1e-6)


def test_normalization_is_computed_in_float64_whatever_the_config_type() -> None:
    patch = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean32, std32 = np.array(MEAN, np.float32), np.array(STD, np.float32)
    rgb = patch[:, :, ::-1].transpose(2, 0, 1).astype(np.float64)
    expected = ((rgb - 255.0 * mean32.astype(np.float64)[:, None, None])
                / (255.0 * std32.astype(np.float64)[:, None, None])).astype(np.float32)
    np.testing.assert_array_equal(normalize_patches([patch], mean32, std32)[0], expected)


@pytest.fixture(scope="module")
def noise_1600x1200() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, size=(1200, 1600, 3), dtype=np.uint8)


@pytest.mark.parametrize(("box", "right"), [
    ([650, 325, 950, 875], True),  # side 1100 (sigma 0.57, radius 2), wholly inside: the blurred region is cut
    ([150, 325, 450, 875], False),  # over the left edge, mirrored: the blur's border at the image edge
    ([1450, 900, 1750, 1450], True),  # over the right and bottom edges
    ([2250, 325, 2550, 875], False),  # off the image (crop_images does not check boxes): zeros
])
def test_strongly_blurred_crops_of_a_large_noisy_image_equal_the_original(noise_1600x1200, box, right):
    """Noise (sharp edges everywhere) and a kernel of radius 2: the blurred region's bounds and border matter."""
    crop = box_to_crop(np.array(box, np.float32), right)
    assert crop.size == 1100
    patch = crop_images(noise_1600x1200, [crop])[0]
    assert patch.shape == (256, 256, 3) and patch.dtype == np.float64  # as skimage's float output, warped
    ours = normalize_patches([patch], MEAN, STD)[0]
    np.testing.assert_allclose(ours, reference_crop(noise_1600x1200, box, right), rtol=0, atol=1e-5)


def test_patch_size_is_honoured():
    """A 64-px crop of a 64-px patch is a pure shift; a 150-px crop of it is blurred (150 / 64 / 2 > 1.1)."""
    img = np.random.default_rng(12).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    box = np.float32([60 - 12, 50 - 16, 60 + 12, 50 + 16])  # 32 high: side 64 at rescale 2
    patch = crop_images(img, [box_to_crop(box, True)], patch_size=64)[0]
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
    np.testing.assert_array_equal(patch[1:63, 1:63], img[50 - 31:50 + 31, 60 - 31:60 + 31])
    blurred = crop_images(img, [box_to_crop(box, True, rescale_factor=150 / 32)], patch_size=64)[0]
    assert blurred.shape == (64, 64, 3) and blurred.dtype == np.float64


@pytest.mark.parametrize(("size", "right", "near"), [(4000, True, False), (4000, False, False), (2600, True, False),
                                                     (4000, True, True), (4000, False, True)])
def test_sides_of_a_very_large_blurred_crop_equal_the_original(size, right, near):
    """A crop of several thousand pixels (sigma 3.4, kernel radius 14) lying mostly off a small noise image, with
    its far sides (right and bottom) or its near sides (left and top) inside it (mirrored for a left hand): the
    blurred region must reach a full kernel radius past the pixels the warp reads. Cheap: the reference blurs only
    the 240 x 320 image."""
    img = np.random.default_rng(13).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    side_x, side_y = (70, 60) if near else (250, 180)  # where the crop's sides lie (on the mirrored image if left)
    cx = side_x + size / 2 if near else side_x - size / 2
    cx = cx if right else 320 - 1 - cx
    cy = side_y + size / 2 if near else side_y - size / 2
    h, w = size / 2, size / 2 * 3 / 4  # a 3:4 box: side = 2 * h
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    crop = box_to_crop(np.array(box, np.float32), right)
    assert crop.size == size
    ours = normalize_patches(crop_images(img, [crop]), MEAN, STD)[0]
    expected = reference_crop(img, box, right)
    corner = ours[:, :20, :20] if near else ours[:, -20:, -20:]
    assert (corner != ours[:, 128:129, 128:129]).any()  # the image shows in that corner of the patch
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_a_crop_reading_a_huge_region_takes_the_reduced_path(monkeypatch):
    """The region limit, lowered for a cheap image: a 3000 px crop centred at (1700.25, 1600.25) of a 2000 x 1500
    image (sigma 2.43, kernel radius 10) reads x 189..2000, y 89..1500 (floor of the corner 200.25 or 100.25, less
    1 + radius; the far sides clipped to the image):
    1811 x 1411 = 2,555,321 px. Over the limit it is shrunk by ceil(sqrt(2555321 / limit)) = 2; at it, exact."""
    from hamer import cropping

    img = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    crop = box_to_crop(np.float32([1137.75, 850.25, 2262.75, 2350.25]), True)
    assert crop.size == 3000 and crop.center.tolist() == [1700.25, 1600.25]
    calls = []
    real = cropping.reduction_factor

    def reduction_factor(sigma: float, region_pixels: int) -> int:  # the real one, its calls recorded
        calls.append((region_pixels, real(sigma, region_pixels)))
        return calls[-1][1]

    monkeypatch.setattr(cropping, "reduction_factor", reduction_factor)
    monkeypatch.setattr(cropping, "MAX_EXACT_REGION", 1811 * 1411 - 1)
    (reduced,) = crop_images(img, [crop])
    assert calls == [(1811 * 1411, 2)]
    monkeypatch.setattr(cropping, "MAX_EXACT_REGION", 1811 * 1411)
    (exact,) = crop_images(img, [crop])
    assert calls[1:] == [(1811 * 1411, 1)]  # the exact path
    assert reduced.shape == exact.shape == (256, 256, 3) and not np.array_equal(reduced, exact)  # another path
