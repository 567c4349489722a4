"""HAMER.predict's typed FrameResult, the seed's calls as views of it, threads, and the light import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest

import hamer.checkpoint as checkpoint_module
from hamer import FrameResult, Hand
from hamer.hamer_module import HAMER

from conftest import TWO_BOXES, smooth_noise_image

BOXES = TWO_BOXES


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return smooth_noise_image()


@pytest.fixture(scope="module")
def hamer(data_dir) -> HAMER:
    return HAMER(data_dir=data_dir)


def test_predict_returns_typed_hands_equal_to_process(hamer, image):
    result = hamer.predict(image, {"Left": BOXES["Left"], "Right": BOXES["Right"]})
    assert isinstance(result, FrameResult) and result.image_size == (320, 240)
    assert [h.label for h in result.hands] == ["Right", "Left"]  # stable order, whatever the dict's
    assert result.detections is None and result.camera.fx == 5000 / 256 * 320
    legacy = dict(hamer.result)
    keypoints, boxes = hamer.process(image, BOXES)
    for i, hand in enumerate(result.hands):
        assert isinstance(hand, Hand) and hand.detector == "user" and np.isnan(hand.score)
        assert hand.keypoints_3d.shape == (21, 3) and hand.keypoints_2d.shape == (21, 2)
        assert hand.vertices.shape == (778, 3) and hand.cam_t.shape == (3,)
        assert hand.mano.hand_pose.shape == (15, 3, 3) and hand.mano.betas.shape == (10,)
        np.testing.assert_array_equal(hand.keypoints_3d, keypoints[hand.label])
        np.testing.assert_array_equal(hand.box, boxes[hand.label])
        for key, value in (("keypoints_2d", hand.keypoints_2d), ("cam_t_full", hand.cam_t),
                           ("vertices", hand.vertices), ("pred_cam", hand.raw.pred_cam),
                           ("pred_keypoints_3d", hand.raw.pred_keypoints_3d), ("box_size", hand.box_size)):
            np.testing.assert_array_equal(hamer.result[key][i], value, err_msg=key)
            np.testing.assert_array_equal(legacy[key][i], value, err_msg=key)
        np.testing.assert_array_equal(hamer.result["pred_mano_params"]["global_orient"][i], hand.mano.global_orient)
    assert hamer.result["hands"] == ["Right", "Left"]


def test_results_are_immutable_values(hamer, image):
    result = hamer.predict(image, {"Right": BOXES["Right"]})
    hand = result["Right"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        hand.label = "Left"
    with pytest.raises(ValueError, match="read-only"):
        hand.keypoints_3d[0, 0] = 1.0
    with pytest.raises(KeyError):
        result["Left"]
    assert result.get("Left") is None
    later = hamer.predict(image, {"Right": BOXES["Left"]})
    assert not np.array_equal(later["Right"].keypoints_3d, hand.keypoints_3d)  # the first result is untouched


def test_no_hands_and_bbox_only(hamer, image):
    empty = hamer.predict(image, {})
    assert empty.hands == () and empty.keypoints_3d == {} and hamer.result == {"hands": []}


def test_one_object_from_two_threads_gives_each_call_its_own_hands(hamer, image):
    expected = {label: hamer.process(image, {label: box})[0][label] for label, box in BOXES.items()}
    errors: list[str] = []
    start = threading.Barrier(2)

    def work(label: str) -> None:
        start.wait()
        for _ in range(40):
            keypoints, _ = hamer.process(image, {label: BOXES[label]})
            result = hamer.predict(image, {label: BOXES[label]})
            if list(keypoints) != [label] or not np.array_equal(keypoints[label], expected[label]):
                errors.append(f"process in the {label} thread got {list(keypoints)}")
            if result.labels != [label] or not np.array_equal(result[label].keypoints_3d, expected[label]):
                errors.append(f"predict in the {label} thread got {result.labels}")

    threads = [threading.Thread(target=work, args=(label,)) for label in BOXES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_objects_load_at_once_in_threads(data_dir, monkeypatch):
    """torch's allow-list of unpickled classes is process-wide: concurrent loads must not remove it for others (the
    torch backend: it reads the checkpoint every time; the default one reads none on a cached export)."""
    builds = []  # checkpoint reads (the unpickling)
    real_read = checkpoint_module.read_checkpoint

    def counting_read(paths):
        builds.append(threading.get_ident())
        return real_read(paths)

    monkeypatch.setattr(checkpoint_module, "read_checkpoint", counting_read)
    errors: list[BaseException] = []
    for _ in range(4):
        shared = HAMER(data_dir=data_dir, backend="torch")
        callers = [HAMER(data_dir=data_dir, backend="torch") for _ in range(5)] + [shared, shared]
        start = threading.Barrier(len(callers))

        def load(obj: HAMER, start: threading.Barrier) -> None:
            start.wait()
            try:
                obj.load()
            except BaseException as exc:  # noqa: BLE001 - the test reports every failure
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(obj, start)) for obj in callers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(builds) == 4 * 6  # the shared object, loaded from two threads at once, read its checkpoint once


def test_import_is_light():
    code = ("import sys; from hamer import HAMER, FrameResult, Hand; "
            "print(sorted(m for m in ('mediapipe', 'onnx', 'onnxruntime', 'timm', 'torch', 'torchvision', 'smplx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
