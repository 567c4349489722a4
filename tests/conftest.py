from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic import make_data_dir

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
# A right and a left box on :func:`smooth_noise_image` (240 x 320): hand-sized, apart, inside the image.
TWO_BOXES = {"Right": [60.0, 50.0, 140.0, 150.0], "Left": [200.0, 80.0, 260.0, 140.0]}


def smooth_noise_image() -> np.ndarray:
    """A 240 x 320 BGR image of blurred noise (seed 0): texture for the crops, no hands."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8), (0, 0), 3)


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """The default CPU path's ONNX cache, one per test session (never the user's ~/.cache). Every HAMER that loads
    a checkpoint with the default backend goes through it: the small model's export takes about 0.4 s, once per
    checkpoint."""
    import hamer.configs

    path = tmp_path_factory.mktemp("onnx_cache")
    hamer.configs.ONNX_CACHE_DIR = path
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A complete synthetic HaMeR data folder (small model)."""
    root = tmp_path_factory.mktemp("hamer_data") / "_DATA"
    make_data_dir(root)
    return root


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory):
    """The random model the ``data_dir`` checkpoint was written from (same seed)."""
    return make_data_dir(tmp_path_factory.mktemp("hamer_ref") / "_DATA")
