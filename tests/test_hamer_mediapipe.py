"""HAMER.process_with_mediapipe on real photographs: boxes, labels, bbox_only, VIDEO mode, landmarker choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hamer.hamer_module import HAMER, hand_path, pose_path

from conftest import SHARED_IMAGES

pytestmark = pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason=f"test photographs not found at {SHARED_IMAGES}")


def _image(name: str) -> np.ndarray:
    return cv2.imread(str(SHARED_IMAGES / name))


def test_bbox_only_needs_no_checkpoint(tmp_path):
    with HAMER(data_dir=tmp_path / "no_data_here") as hamer:
        keypoints, boxes = hamer.process_with_mediapipe(_image("test4.jpg"), bbox_only=True)
        assert keypoints == {} and sorted(boxes) == ["Left", "Right"]
        assert hamer.cfg is None  # the network was never loaded
        for label, box in boxes.items():
            landmarks = hamer.result["mp_kpts"][label]
            assert landmarks.shape == (21, 2)
            np.testing.assert_allclose(box, [*landmarks.min(0), *landmarks.max(0)], rtol=1e-6)


def test_joints_for_every_hand_found(data_dir):
    with HAMER(data_dir=data_dir) as hamer:
        keypoints, boxes = hamer.process_with_mediapipe(_image("test8.jpg"))
        assert sorted(keypoints) == sorted(boxes) == ["Left", "Right"]
        assert hamer.result["hands"] == list(boxes)
        assert hamer.result["keypoints_2d"].shape == (2, 21, 2)
        assert all(keypoints[k].shape == (21, 3) for k in keypoints)


def test_one_hand_per_label_in_the_dict_all_in_the_result(tmp_path):
    with HAMER(data_dir=tmp_path, num_hands=4) as hamer:
        _, boxes = hamer.process_with_mediapipe(_image("test3.jpg"), bbox_only=True)
        detections = hamer.result["detections"]
        lefts = [d for d in detections if d.label == "Left" and d.source == "hand"]
        assert len(lefts) >= 2 and "Left" in boxes
        assert len(detections) == len(lefts) + ("Right" in boxes)  # no right hand found: the pose fallback's box
        best = max(lefts, key=lambda d: d.score)
        assert hamer.result["mp_detections"]["Left"] is best
        np.testing.assert_array_equal(boxes["Left"], best.box)


def test_pose_only_and_hand_only(tmp_path):
    img = _image("test6.jpg")
    with HAMER(data_dir=tmp_path, task_paths={"pose": pose_path}) as hamer:
        _, boxes = hamer.process_with_mediapipe(img, bbox_only=True)
        assert "Right" in boxes and hamer.result["mp_source"]["Right"] == "pose"
    with HAMER(data_dir=tmp_path, task_paths={"hand": hand_path}) as hamer:
        _, boxes = hamer.process_with_mediapipe(img, bbox_only=True)
        assert list(boxes) == ["Right"] and hamer.result["mp_source"]["Right"] == "hand"


def test_video_mode_tracks_a_panning_clip_and_rejects_time_going_back(tmp_path):
    img = _image("test5.jpeg")
    height, width = img.shape[:2]
    with HAMER(mode="VIDEO", data_dir=tmp_path) as hamer:
        centers = []
        for i in range(6):
            shift = np.float32([[1, 0, 3 * i], [0, 1, 0]])
            frame = cv2.warpAffine(img, shift, (width, height))
            _, boxes = hamer.process_with_mediapipe(frame, bbox_only=True, timestamp_ms=100 + 40 * i)
            assert "Right" in boxes, f"frame {i}"
            centers.append((boxes["Right"][0] + boxes["Right"][2]) / 2)
        assert np.all(np.diff(centers) > 0)  # the hand moves right with the image
        with pytest.raises(ValueError, match="increase"):
            hamer.process_with_mediapipe(img, bbox_only=True, timestamp_ms=50)
        hamer.process_with_mediapipe(img, bbox_only=True)  # a derived timestamp continues from the last one
