"""Calibration data: normalized hand crops from image files, and their split into calibration and held-out sets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..configs import PathLike

# Box jitter of the extra calibration crops, HaMeR's training augmentation ranges (its config's
# DATASETS.CONFIG.TRANS_FACTOR and SCALE_FACTOR): centre moved by up to 2% of the box, size scaled by 0.7-1.3.
JITTER_SHIFT = 0.02
JITTER_SCALE = 0.3
CALIBRATION_JITTER = 7  # jittered copies of each calibration hand: GPTQ's Hessians from 8x the activations


def jittered_boxes(boxes: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 4) boxes x1, y1, x2, y2 -> (N * copies, 4): each box ``copies`` times with its centre moved by up to
    ``JITTER_SHIFT`` of its width/height and its size scaled by 1 +- ``JITTER_SCALE`` (uniform draws)."""
    boxes = np.repeat(np.asarray(boxes, dtype=np.float64), copies, axis=0)
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + size * rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size.shape)
    half = size / 2 * (1 + rng.uniform(-JITTER_SCALE, JITTER_SCALE, (len(boxes), 1)))
    return np.concatenate([centre - half, centre + half], axis=1)


def calibration_crops(images: Iterable[PathLike], cfg, rescale_factor: float = 2.0, jitter: int = 0,
                      seed: int = 0) -> np.ndarray:
    """Network inputs (N, 3, 256, 256) float32 for every hand MediaPipe finds in ``images`` (image files).

    The crops are made as ``HAMER.process_with_mediapipe`` makes them (left hands mirrored), each hand followed by
    ``jitter`` crops of it with its box jittered as HaMeR's training jittered boxes (``jittered_boxes``, drawn
    from ``seed``): more calibration activations from the same hands. ValueError when an image cannot be read or
    no hand is found in any.
    """
    from ..detection import HandDetector
    from ..images import read_image
    from ..pipeline import make_inputs

    images = list(images)
    rng = np.random.default_rng(seed)
    batches = []
    with HandDetector() as detector:
        for path in images:
            img = read_image(path)  # an unreadable image: hamer.images.ImageError, a ValueError naming it
            for d in detector.detect(img):
                boxes = np.concatenate([d.box[None], jittered_boxes(d.box[None], jitter, rng)]).astype(np.float32)
                rights = np.full(len(boxes), d.label == "Right")
                batches.append(make_inputs(img, boxes, rights, cfg, rescale_factor)[0])
    if not batches:
        shown = ", ".join(map(str, images[:4])) + (", ..." if len(images) > 4 else "")
        raise ValueError(f"MediaPipe found no hand in any of the {len(images)} image(s) {shown}")
    return np.concatenate(batches)


def calibration_sets(images: list[PathLike], cfg, jitter: int = CALIBRATION_JITTER) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out crops from ``images`` (image files, in order): the hands of every other image
    (the 1st, 3rd, ...), each with ``jitter`` jittered copies, calibrate; the hands of the others, as they are,
    measure the error. ValueError when there are fewer than 2 images or a set has no hand."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images (half calibrate, half measure the error), got {len(images)}")
    return calibration_crops(images[0::2], cfg, jitter=jitter), calibration_crops(images[1::2], cfg)


def image_files(folder: PathLike) -> list[Path]:
    """The image files in ``folder``, sorted; ValueError when it is not a folder or holds none."""
    from ..images import IMAGE_SUFFIXES

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no image files")
    return files
