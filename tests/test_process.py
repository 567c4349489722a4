"""HAMER.process end to end on a synthetic data folder: outputs, frames, faithfulness to the network, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hamer.configs as hcfg
from hamer.hamer_module import HAMER
from hamer.pipeline import make_inputs

from conftest import TWO_BOXES, smooth_noise_image

BOXES = TWO_BOXES


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return smooth_noise_image()


@pytest.fixture(scope="module")
def hamer(data_dir) -> HAMER:
    return HAMER(data_dir=data_dir)


def test_outputs_shapes_dtypes_and_order(hamer, image):
    keypoints, boxes = hamer.process(image, BOXES)
    assert list(keypoints) == ["Right", "Left"] and list(boxes) == ["Right", "Left"]
    for label in BOXES:
        assert keypoints[label].shape == (21, 3) and keypoints[label].dtype == np.float32
        np.testing.assert_array_equal(boxes[label], np.float32(BOXES[label]))
    r = hamer.result
    assert r["hands"] == ["Right", "Left"]
    shapes = {"pred_cam": (2, 3), "pred_cam_t": (2, 3), "focal_length": (2, 2), "pred_keypoints_3d": (2, 21, 3),
              "pred_vertices": (2, 778, 3), "pred_keypoints_2d": (2, 21, 2), "keypoints_3d": (2, 21, 3),
              "vertices": (2, 778, 3), "cam_t_full": (2, 3), "keypoints_2d": (2, 21, 2), "box_center": (2, 2),
              "box_size": (2,)}
    for key, shape in shapes.items():
        assert r[key].shape == shape, key
        assert r[key].dtype == np.float32, key
        assert np.isfinite(r[key]).all(), key
    assert r["pred_mano_params"]["hand_pose"].shape == (2, 15, 3, 3)
    np.testing.assert_array_equal(keypoints["Left"], r["keypoints_3d"][1])


def test_results_equal_the_network_on_the_same_crops(hamer, image, reference_model):
    hamer.process(image, BOXES)
    r = hamer.result
    rights = np.array([True, False])
    inputs, _ = make_inputs(image, np.array(list(BOXES.values()), np.float32), rights, hamer.cfg, 2.0)
    with torch.no_grad():
        out = reference_model(torch.from_numpy(inputs))
    for key in ("pred_cam", "pred_cam_t", "pred_keypoints_3d", "pred_vertices", "pred_keypoints_2d"):
        np.testing.assert_allclose(r[key], out[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    # left hands: the model's output is mirrored; keypoints_3d/vertices are un-mirrored (x negated)
    np.testing.assert_allclose(r["keypoints_3d"][0], r["pred_keypoints_3d"][0], rtol=0, atol=0)
    np.testing.assert_allclose(r["keypoints_3d"][1] * [-1, 1, 1], r["pred_keypoints_3d"][1], rtol=0, atol=0)
    np.testing.assert_allclose(r["vertices"][1] * [-1, 1, 1], r["pred_vertices"][1], rtol=0, atol=0)


def test_full_image_camera_and_2d_joints(hamer, image):
    hamer.process(image, BOXES)
    r = hamer.result
    height, width = image.shape[:2]
    focal = 5000 / 256 * max(width, height)
    for i, right in enumerate([True, False]):
        s, tx, ty = r["pred_cam"][i].astype(np.float64)
        tx = tx if right else -tx
        bs = r["box_size"][i] * s + 1e-9
        cx, cy = r["box_center"][i]
        expected = [2 * (cx - width / 2) / bs + tx, 2 * (cy - height / 2) / bs + ty, 2 * focal / bs]
        np.testing.assert_allclose(r["cam_t_full"][i], expected, rtol=1e-4)
        p = r["keypoints_3d"][i].astype(np.float64) + r["cam_t_full"][i]
        uv = focal * p[:, :2] / p[:, 2:] + [width / 2, height / 2]
        np.testing.assert_allclose(r["keypoints_2d"][i], uv, rtol=1e-4, atol=1e-2)
    # the crop camera and the full-image camera put the joints at the same pixels
    for i in range(2):
        crop_uv = r["pred_keypoints_2d"][i] * [1 if i == 0 else -1, 1]
        full_uv = r["box_center"][i] + crop_uv * r["box_size"][i]
        np.testing.assert_allclose(r["keypoints_2d"][i], full_uv, atol=0.05 * r["box_size"][i])


def test_left_hand_is_the_mirrored_right_hand_of_the_mirrored_image(hamer, image):
    width = image.shape[1]
    box = np.array(BOXES["Left"])
    keypoints, _ = hamer.process(image, {"Left": box})
    left2d = hamer.result["keypoints_2d"][0].copy()
    mirrored = np.ascontiguousarray(image[:, ::-1])
    keypoints_m, _ = hamer.process(mirrored, {"Right": [width - 1 - box[2], box[1], width - 1 - box[0], box[3]]})
    np.testing.assert_allclose(keypoints["Left"], keypoints_m["Right"] * [-1, 1, 1], rtol=0, atol=1e-6)
    # 2D: mirrored about the image's pixel centre, within the original's half-pixel convention
    np.testing.assert_allclose(left2d[:, 0], width - 1 - hamer.result["keypoints_2d"][0][:, 0], atol=1.0)


def test_batch_of_hands_equals_hands_alone(hamer, image):
    both, _ = hamer.process(image, BOXES)
    for label, box in BOXES.items():
        alone, _ = hamer.process(image, {label: box})
        np.testing.assert_allclose(alone[label], both[label], rtol=1e-5, atol=1e-6)


def test_grayscale_and_bgra_are_converted(hamer, image):
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ref, _ = hamer.process(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), BOXES)
    out, _ = hamer.process(gray, BOXES)
    np.testing.assert_array_equal(out["Right"], ref["Right"])
    ref, _ = hamer.process(image, BOXES)
    out, _ = hamer.process(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), BOXES)
    np.testing.assert_array_equal(out["Left"], ref["Left"])


def test_no_boxes_gives_empty_outputs(hamer, image):
    keypoints, boxes = hamer.process(image, {})
    assert keypoints == {} and boxes == {} and hamer.result["hands"] == []


def test_box_partly_outside_is_fine(hamer, image):
    keypoints, _ = hamer.process(image, {"Right": [-40, -30, 50, 60]})
    assert np.isfinite(keypoints["Right"]).all()


@pytest.mark.parametrize("img, message", [
    (None, "None"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images(hamer, img, message):
    with pytest.raises(ValueError, match=message):
        hamer.process(img, BOXES)


@pytest.mark.parametrize("boxes, message", [
    ({"right": [0, 0, 10, 10]}, "label"),
    ({"Right": [0, np.nan, 10, 10]}, "NaN"),
    ({"Right": [50, 50, 10, 10]}, "inverted"),
    ({"Right": [10, 10, 10, 40]}, "zero size"),
    ({"Right": [400, 10, 500, 60]}, "outside"),
    ({"Left": [-90, -90, -10, -10]}, "outside"),
    ({"Right": [1, 2, 3]}, "4 numbers"),
    ({"Right": "abcd"}, "4 numbers"),
    ([[0, 0, 10, 10]], "dict"),
])
def test_bad_boxes(hamer, image, boxes, message):
    with pytest.raises(ValueError, match=message):
        hamer.process(image, boxes)


def test_data_dir_is_read_when_hamer_is_made(monkeypatch, data_dir, image, tmp_path):
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", str(tmp_path / "nowhere"))
    h = HAMER()  # constructing needs no data
    with pytest.raises(FileNotFoundError, match="nowhere"):
        h.process(image, BOXES)
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", str(data_dir))
    keypoints, _ = HAMER().process(image, BOXES)
    assert keypoints["Right"].shape == (21, 3)


def test_unavailable_or_invalid_device():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda is not available"):
            HAMER(device="cuda")
    with pytest.raises(ValueError, match="device"):
        HAMER(device="gpu:zero")
    with pytest.raises(ValueError, match="device"):
        HAMER(device="meta")
    assert HAMER(device="cpu").device == HAMER(device=torch.device("cpu")).device == "cpu"


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mode"):
        HAMER(mode="STREAM")
    with pytest.raises(ValueError, match="rescale_factor"):
        HAMER(rescale_factor=0)
    with pytest.raises(ValueError, match="task_paths"):
        HAMER(task_paths={"face": "x.task"})
    with pytest.raises(ValueError, match="precision"):
        HAMER(precision="int4")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
            HAMER(precision="fp16")  # checked at construction, not when the network loads


def test_bf16_autocast_runs_close_to_fp32(data_dir, image):
    ref, _ = HAMER(data_dir=data_dir).process(image, BOXES)
    out, _ = HAMER(data_dir=data_dir, precision="bf16").process(image, BOXES)
    assert np.abs(out["Right"] - ref["Right"]).max() < 5e-3  # metres, random small model


def test_switching_mode_keeps_the_loaded_network(data_dir):
    hamer = HAMER(data_dir=data_dir)
    hamer.load()
    runtime = hamer.reconstructor
    hamer.set_mode("VIDEO")
    assert hamer.mode == "VIDEO" and hamer.reconstructor is runtime  # (a dropped network would load anew)
    with pytest.raises(ValueError, match="mode"):
        hamer.set_mode("video")
