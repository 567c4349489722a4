"""Calibration crops for the 8-bit quantizer: jittered boxes, the calibration / held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from hamer.quantize import calibration_sets, jittered_boxes


def test_jittered_boxes_stay_within_hamers_training_jitter() -> None:
    boxes = np.array([[100.0, 50.0, 200.0, 250.0], [10.0, 20.0, 40.0, 30.0]])
    out = jittered_boxes(boxes, 500, np.random.default_rng(0))
    assert out.shape == (1000, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        copies = out[i * 500:(i + 1) * 500]  # each box's copies follow one another
        size = np.array([x2 - x1, y2 - y1])
        centre = (copies[:, :2] + copies[:, 2:]) / 2
        offset = (centre - [(x1 + x2) / 2, (y1 + y2) / 2]) / size
        scale = (copies[:, 2:] - copies[:, :2]) / size
        assert np.abs(offset).max() <= 0.02 and np.abs(offset).max() > 0.019
        np.testing.assert_allclose(scale[:, 0], scale[:, 1])  # the aspect ratio is kept
        assert 0.7 <= scale.min() < 0.71 and 1.29 < scale.max() <= 1.3
    np.testing.assert_array_equal(out, jittered_boxes(boxes, 500, np.random.default_rng(0)))
    assert jittered_boxes(boxes, 0, np.random.default_rng(0)).shape == (0, 4)


def test_calibration_needs_two_images() -> None:
    with pytest.raises(ValueError, match=r"need at least 2 images \(half calibrate, half measure the error\), got 1"):
        calibration_sets(["a.jpg"], cfg=None)
