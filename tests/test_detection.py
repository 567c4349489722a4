"""Tests of hamer.detection on real photographs (../shared/images beside the checkout)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from hamer.detection import HAND_TASK_PATH, POSE_TASK_PATH, DetectorOptions, HandDetection, HandDetector

from conftest import SHARED_IMAGES as IMAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")

# What the hand landmarker finds with num_hands=4 (shared/images/README.md), sorted.
README_LABELS = {
    "test1.jpg": [],
    "test2.png": ["Left", "Left"],
    "test3.jpg": ["Left", "Left"],
    "test4.jpg": ["Left", "Right"],
    "test5.jpeg": ["Right"],
    "test6.jpg": ["Right"],
    "test7.jpg": ["Left", "Left", "Right"],
    "test8.jpg": ["Left", "Right"],
}
# Points (x, y pixels) on a subject's own right/left hand, checked by eye on the photographs.
SUBJECT_HANDS = {
    # gardening: the right hand (with the watch) of the woman in black, the left hand of the woman in blue on her knee
    "test4.jpg": [("Right", (210, 495)), ("Left", (510, 375))],
    # typing, seated off the right edge facing left: the far hand (thumb toward the camera, pinky away) is the right
    "test5.jpeg": [("Right", (225, 80))],
    # trophy holder facing the camera: his right hand hangs on the image left
    "test6.jpg": [("Right", (100, 555))],
    # player #30 facing the camera: right hand across his body on the ball, left hand (wristband) under it
    "test8.jpg": [("Right", (1400, 440)), ("Left", (1560, 530))],
}


def load(name: str) -> np.ndarray:
    img = cv2.imread(str(IMAGES / name))
    assert img is not None, name
    return img


def contains(box: np.ndarray, point: tuple[float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def check_detection(d: HandDetection, shape: tuple[int, ...]) -> None:
    height, width = shape[:2]
    assert d.label in ("Right", "Left") and d.source in ("hand", "pose")
    assert d.box.dtype == np.float32 and d.box.shape == (4,)
    assert d.landmarks.dtype == np.float32 and d.landmarks.shape == ((21, 2) if d.source == "hand" else (4, 2))
    assert 0.0 <= d.score <= 1.0
    size = d.box[2:] - d.box[:2]
    assert np.all(size > 0) and max(size) < max(height, width), d.box
    assert contains(np.array([0, 0, width, height]), (d.box[:2] + d.box[2:]) / 2), d.box


@pytest.fixture(scope="module")
def hand_only():
    with HandDetector(DetectorOptions(pose_task_path=None, num_hands=4)) as detector:
        yield detector


@pytest.fixture(scope="module")
def detector():
    with HandDetector(DetectorOptions(num_hands=4)) as detector:
        yield detector


@pytest.fixture(scope="module")
def pose_only():
    with HandDetector(DetectorOptions(hand_task_path=None)) as detector:
        yield detector


def test_bundles_are_small_task_zips():
    for path, members in ((HAND_TASK_PATH, {"hand_detector.tflite", "hand_landmarks_detector.tflite"}),
                          (POSE_TASK_PATH, {"pose_detector.tflite", "pose_landmarks_detector.tflite"})):
        assert path.stat().st_size < 12 * 2**20, path
        with zipfile.ZipFile(path) as bundle:
            assert set(bundle.namelist()) == members
            assert all(info.compress_type == zipfile.ZIP_STORED for info in bundle.infolist())


@needs_images
@pytest.mark.parametrize("name", sorted(README_LABELS))
def test_hand_landmarker_boxes(hand_only, name):
    img = load(name)
    detections = hand_only.detect(img)
    assert sorted(d.label for d in detections) == README_LABELS[name]
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    for d in detections:
        check_detection(d, img.shape)
        assert d.source == "hand"
        np.testing.assert_array_equal(d.box, np.concatenate([d.landmarks.min(0), d.landmarks.max(0)]))


@needs_images
@pytest.mark.parametrize("name", sorted(SUBJECT_HANDS))
def test_labels_are_the_subjects_hands(hand_only, name):
    detections = hand_only.detect(load(name))
    for label, point in SUBJECT_HANDS[name]:
        assert [d.label for d in detections if contains(d.box, point)] == [label], (label, point)


@needs_images
@pytest.mark.parametrize("name, label", [("test4.jpg", "Right"), ("test4.jpg", "Left"), ("test6.jpg", "Right")])
def test_pose_fallback_covers_the_hand(hand_only, pose_only, name, label):
    img = load(name)
    hand_box = next(d.box for d in hand_only.detect(img) if d.label == label)
    pose = [d for d in pose_only.detect(img) if d.label == label]
    for d in pose:
        check_detection(d, img.shape)
        assert d.source == "pose" and d.score >= 0.5
    best = max(pose, key=lambda d: iou(d.box, hand_box))
    assert iou(best.box, hand_box) > 0.35
    assert contains(best.box, (hand_box[:2] + hand_box[2:]) / 2)


@needs_images
def test_pose_runs_only_for_a_missing_side(detector, caplog):
    # test6: the hand landmarker misses the trophy hand (subject's left, raised on the image right).
    pose_ran = "no hand landmarks for ['Left']: running the pose landmarker"  # its debug line
    with caplog.at_level(logging.DEBUG, logger="hamer.detection"):
        found = detector.detect(load("test6.jpg"))
    assert pose_ran in caplog.messages
    assert {(d.label, d.source) for d in found} == {("Right", "hand"), ("Left", "pose")}
    left = next(d for d in found if d.label == "Left")
    assert (left.box[0] + left.box[2]) / 2 > 407 / 2 and (left.box[1] + left.box[3]) / 2 < 610 / 2
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hamer.detection"):
        assert {d.source for d in detector.detect(load("test4.jpg"))} == {"hand"}
    assert not [m for m in caplog.messages if "pose landmarker" in m]  # both sides found: no pose run


@needs_images
def test_video_mode():
    img = load("test4.jpg")
    step, margin = 4, 40
    with HandDetector(DetectorOptions(mode="VIDEO")) as video:
        previous = None
        for i in range(8):
            frame = img[:, step * i: step * i + img.shape[1] - margin]  # the view pans right: hands move left
            detections = video.detect(frame, timestamp_ms=40 * i)
            assert sorted(d.label for d in detections) == ["Left", "Right"]
            right = next(d.box for d in detections if d.label == "Right")
            if previous is not None:
                assert abs((right[0] - previous[0]) + step) < 3
            previous = right
        with pytest.raises(ValueError, match="increase"):
            video.detect(img, timestamp_ms=100)
        with pytest.raises(ValueError, match="increase"):
            video.detect(img, timestamp_ms=280)
        assert video.detect(img)  # derived timestamp: 280 + 33
        assert video.detect(img, timestamp_ms=1000)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        HandDetector(DetectorOptions(mode="LIVE_STREAM"))
    with pytest.raises(ValueError, match="both None"):
        HandDetector(DetectorOptions(hand_task_path=None, pose_task_path=None))
    missing = tmp_path / "missing.task"
    with pytest.raises(FileNotFoundError, match="missing.task"):
        HandDetector(DetectorOptions(pose_task_path=missing))


def test_bad_inputs_and_closing(hand_only):
    for bad in (None, np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8),
                np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="image"):
            hand_only.detect(bad)
    for ok in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 1), np.uint8), np.zeros((64, 64, 4), np.uint8)):
        assert hand_only.detect(ok) == []
    detector = HandDetector(DetectorOptions(pose_task_path=None))
    detector.close()
    detector.close()
    with pytest.raises(RuntimeError, match="closed"):
        detector.detect(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("mode", ["IMAGE", "VIDEO"])
def test_exit_without_close_is_clean(mode):
    code = ("import numpy as np\n"
            "from hamer.detection import DetectorOptions, HandDetector\n"
            f"detector = HandDetector(DetectorOptions(mode={mode!r}))\n"
            "detector.detect(np.zeros((64, 64, 3), np.uint8))\n")  # no hand: runs both landmarkers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_a_detector_leaves_mediapipes_audio_and_drawing_modules_unloaded_until_used():
    # (in a fresh process: this one may have imported MediaPipe whole)
    code = ("import sys\n"
            "from hamer.detection import HandDetector\n"
            "HandDetector().close()\n"
            "heavy = ('matplotlib.pyplot', 'sounddevice')\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "from mediapipe.tasks.python import audio\n"
            "from mediapipe.tasks.python.vision import drawing_styles, drawing_utils\n"
            "spec = drawing_utils.DrawingSpec(color=(1, 2, 3))\n"
            "style = drawing_styles.get_default_hand_landmarks_style()\n"
            "print(spec.color, len(style), audio.AudioClassifier.__name__, 'matplotlib.pyplot' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    # none loaded by the detector; each works, loaded, once used (21 hand landmarks styled)
    assert result.stdout.splitlines() == ["[]", "(1, 2, 3) 21 AudioClassifier True"]
