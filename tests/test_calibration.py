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


def test_write_tensor_inline_and_in_its_external_data_file(tmp_path) -> None:
    """The re-rounded int8 weights land where the initializer keeps its data: in the graph, or at its offset in
    the external data file (the bytes around it untouched)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    from hamer.quantize.graph import read_tensor, write_tensor

    value = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    inline = numpy_helper.from_array(np.zeros((3, 4), np.int8), "w")
    write_tensor(inline, tmp_path, value)
    np.testing.assert_array_equal(numpy_helper.to_array(inline), value)

    (tmp_path / "m.data").write_bytes(b"\x01" * 100)
    external = numpy_helper.from_array(np.zeros((3, 4), np.int8), "w")
    set_external_data(external, "m.data", offset=40, length=12)
    external.ClearField("raw_data")
    external.data_location = 1  # EXTERNAL
    write_tensor(external, tmp_path, value)
    np.testing.assert_array_equal(read_tensor(external, tmp_path), value)
    data = (tmp_path / "m.data").read_bytes()
    assert data[:40] == b"\x01" * 40 and data[52:] == b"\x01" * 48
    with pytest.raises(ValueError, match="w: 24 bytes to write over 12"):
        write_tensor(external, tmp_path, value.astype(np.int16))


def test_calibration_crops_errors_name_the_images(tmp_path) -> None:
    import cv2

    from hamer.quantize import calibration_crops

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(ValueError, match=f"MediaPipe found no hand in any of the 1 image\\(s\\) {blank}$"):
        calibration_crops([blank], cfg=None)
    many = [blank] * 6
    with pytest.raises(ValueError, match=f"any of the 6 image\\(s\\) {blank}, {blank}, {blank}, {blank}, ...$"):
        calibration_crops(many, cfg=None)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"^{broken}: not an image whose size can be read from its header"):
        calibration_crops([blank, broken], cfg=None)
