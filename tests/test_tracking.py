"""Video tracking: IoU identity, the Right/Left label hold, the HaMeR re-run under the held label, One Euro."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from hamer.detection import HandDetection
from hamer.hamer_module import HAMER
from hamer.tracking import HandTracker, OneEuroFilter, VideoHands, box_iou

SHAPE = (480, 640, 3)


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "smoothing.py"
    spec = importlib.util.spec_from_file_location("smoothing_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def det(label: str, box, score: float = 0.9, source: str = "hand") -> HandDetection:
    return HandDetection(label, score, np.asarray(box, dtype=np.float32), np.zeros((21, 2), np.float32), source)


RIGHT_BOX = [100, 100, 200, 200]
LEFT_BOX = [400, 100, 500, 200]


def labels_of(hands) -> dict[int, str]:
    return {h.track_id: h.label for h in hands}


# ---------------------------------------------------------------------------------------------------- One Euro

def test_one_euro_passes_first_sample_and_holds_a_constant():
    filt = OneEuroFilter(1.0, 10.0)
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(filt(x, 0.0), x)
    for i in range(1, 5):
        np.testing.assert_allclose(filt(x, i / 30), x)
    with pytest.raises(ValueError, match="increase"):
        filt(x, 4 / 30)
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)


def test_one_euro_on_a_jittered_track_reduces_jitter_with_low_lag():
    """Defaults of `hamer run --smooth` on a smooth 30 fps track + 4 mm Gaussian noise (benchmarks/smoothing.py)."""
    m = _benchmark().measure(min_cutoff=1.0, beta=10.0)
    assert m["jitter"] < 0.5 * m["jitter_raw"]  # measured 9.6 -> 3.9 mm/frame
    assert m["rest_jitter"] < 0.25 * m["rest_jitter_raw"]  # measured 9.8 -> 1.6 mm/frame
    assert m["lag"] <= 1.5  # frames; measured 1.0
    assert m["ramp_lag_fast"] < 1.0  # frames at 0.5 m/s; measured 0.55
    no_beta = _benchmark().measure(min_cutoff=1.0, beta=0.0)
    assert no_beta["lag"] > 2 * m["lag"]  # the speed term is what keeps the lag low


# ---------------------------------------------------------------------------------------------------- HandTracker

def test_box_iou():
    assert box_iou(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10])) == 1.0
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(1 / 3)
    assert box_iou(np.array([0, 0, 10, 10]), np.array([20, 20, 30, 30])) == 0.0


def test_identity_follows_moving_boxes():
    tracker = HandTracker()
    ids = None
    for i in range(20):
        shift = np.array([5 * i, 2 * i, 5 * i, 2 * i])
        hands = tracker.update([det("Left", np.add(LEFT_BOX, shift)), det("Right", np.add(RIGHT_BOX, shift))], SHAPE)
        assert [h.label for h in hands] == ["Right", "Left"]
        ids = ids or labels_of(hands)
        assert labels_of(hands) == ids


def test_label_flicker_is_held_and_a_persistent_change_is_taken():
    tracker = HandTracker(label_hold=3)
    first = tracker.update([det("Right", RIGHT_BOX), det("Left", LEFT_BOX)], SHAPE)
    ids = labels_of(first)
    # MediaPipe calls the left hand "Right" for 2 frames (< label_hold): both hands keep their labels.
    for _ in range(2):
        hands = tracker.update([det("Right", RIGHT_BOX), det("Right", LEFT_BOX, score=0.6)], SHAPE)
        assert labels_of(hands) == ids
        assert [h.detected_label for h in hands] == ["Right", "Right"]
    # Both hands swap labels for good: taken on the 3rd consecutive frame, not before.
    for k in range(3):
        hands = tracker.update([det("Left", RIGHT_BOX), det("Right", LEFT_BOX)], SHAPE)
        expected = ids if k < 2 else {i: ("Left" if lab == "Right" else "Right") for i, lab in ids.items()}
        assert labels_of(hands) == expected


def test_a_single_hand_switches_after_the_hold():
    tracker = HandTracker(label_hold=4)
    tracker.update([det("Right", RIGHT_BOX)], SHAPE)
    said = ["Left", "Right", "Left", "Left", "Left", "Left"]
    held = [tracker.update([det(lab, RIGHT_BOX)], SHAPE)[0].label for lab in said]
    assert held == ["Right", "Right", "Right", "Right", "Right", "Left"]  # the run of 4 "Left" ends at the 6th


def test_pose_box_of_a_found_hand_is_dropped():
    tracker = HandTracker()
    hands = tracker.update([det("Right", [470, 358, 555, 398], 0.88),
                            det("Left", [473, 333, 547, 406], 0.93, source="pose")], SHAPE)
    assert [(h.label, h.detector) for h in hands] == [("Right", "hand")]


def test_a_lost_hand_ends_and_a_new_one_waits_for_a_free_label():
    tracker = HandTracker(max_missed=2)
    (right,) = tracker.update([det("Right", RIGHT_BOX)], SHAPE)
    # a second "Right" hand far away while the first is visible: not tracked (one hand per label)
    hands = tracker.update([det("Right", RIGHT_BOX), det("Right", LEFT_BOX, 0.95)], SHAPE)
    assert [(h.track_id, h.label) for h in hands] == [(right.track_id, "Right")]
    for _ in range(3):
        assert tracker.update([], SHAPE) == []
    assert tracker.tracks == []
    (again,) = tracker.update([det("Right", RIGHT_BOX)], SHAPE)
    assert again.track_id != right.track_id


def test_boxes_outside_the_image_are_ignored():
    tracker = HandTracker()
    assert tracker.update([det("Right", [700, 10, 800, 90]), det("Left", [50, 50, 40, 60])], SHAPE) == []


# ---------------------------------------------------------------------------------------------------- VideoHands

class ScriptedDetector:
    """Stands in for MediaPipe in VIDEO mode: reports the scripted detections, one list per frame."""

    def __init__(self, script: list[list[HandDetection]]) -> None:
        self.frames = iter(script)
        self.timestamps: list[int] = []

    def detect(self, img, timestamp_ms=None, frame=None) -> list[HandDetection]:
        self.timestamps.append(timestamp_ms)
        return next(self.frames)


def test_held_label_reruns_hamer_with_that_label(data_dir):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=SHAPE, dtype=np.uint8)
    box = np.array(RIGHT_BOX, dtype=np.float32)
    script = [[det("Right", box)], [det("Left", box)], [det("Right", box)]]  # one frame of flicker
    reference = HAMER(data_dir=data_dir)
    video = VideoHands(ScriptedDetector(script), reference.reconstructor, HandTracker(label_hold=3))
    frames = [video(img, 33 * i) for i in range(3)]

    right, _ = reference.process(img, {"Right": box})
    left, _ = reference.process(img, {"Left": box})
    assert np.abs(right["Right"] - left["Left"]).max() > 1e-3  # the mirror reconstruction differs
    (flicker,) = frames[1].hands
    assert (flicker.label, flicker.detected_label) == ("Right", "Left")
    np.testing.assert_allclose(flicker.keypoints_3d, right["Right"], atol=1e-5)
    assert {h.track_id for f in frames for h in f.hands} == {0}
    assert [len(f.detections) for f in frames] == [1, 1, 1]


def test_smoothing_filters_3d_and_reprojects_2d(data_dir):
    rng = np.random.default_rng(1)
    boxes = [np.array(RIGHT_BOX, np.float32) + rng.normal(scale=3, size=4).astype(np.float32) for _ in range(4)]
    reconstructor = HAMER(data_dir=data_dir).reconstructor
    raw_video = VideoHands(ScriptedDetector([[det("Right", b)] for b in boxes]), reconstructor)
    video = VideoHands(ScriptedDetector([[det("Right", b)] for b in boxes]), reconstructor,
                       make_filter=lambda: OneEuroFilter(1.0, 10.0))
    img = rng.integers(0, 255, size=SHAPE, dtype=np.uint8)
    focal, center = 5000 / 256 * 640, np.array([320.0, 240.0])  # HaMeR's camera for a 640x480 image
    raw, smooth = [], []
    for i in range(4):
        (raw_hand,) = raw_video(img, 33 * i).hands
        result = video(img, 33 * i)
        (hand,) = result.hands
        raw.append(raw_hand)
        smooth.append(hand)
        assert result.camera.fx == focal and (result.camera.cx, result.camera.cy) == tuple(center)
        p = hand.keypoints_3d.astype(np.float64) + hand.cam_t
        np.testing.assert_allclose(hand.keypoints_2d, focal * p[:, :2] / p[:, 2:] + center, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(hand.mano.hand_pose, raw_hand.mano.hand_pose)  # parameters stay raw
    for key in ("keypoints_3d", "vertices", "cam_t"):
        np.testing.assert_allclose(getattr(smooth[0], key), getattr(raw[0], key), atol=1e-6)  # first passes
        assert not np.allclose(getattr(smooth[-1], key), getattr(raw[-1], key), atol=1e-6), key


def test_smoothing_keeps_the_2d_joints_convention_under_the_users_camera(data_dir):
    """With the user's camera the 2D joints are HaMeR's (camera-independent); a filter's first sample passes
    through, so the smoothed 2D joints equal the raw ones, and later they move with the smoothed hand."""
    from hamer.results import Camera

    rng = np.random.default_rng(5)
    boxes = [np.array(RIGHT_BOX, np.float32) + rng.normal(scale=3, size=4).astype(np.float32) for _ in range(3)]
    reconstructor = HAMER(data_dir=data_dir, camera=Camera(90.0, 90.0, 0.0, 480.0)).reconstructor
    raw_video = VideoHands(ScriptedDetector([[det("Right", b)] for b in boxes]), reconstructor)
    video = VideoHands(ScriptedDetector([[det("Right", b)] for b in boxes]), reconstructor,
                       make_filter=lambda: OneEuroFilter(1.0, 10.0))
    img = rng.integers(0, 255, size=SHAPE, dtype=np.uint8)
    for i in range(3):
        (raw,) = raw_video(img, 33 * i).hands
        (smooth,) = video(img, 33 * i).hands
        if i == 0:
            np.testing.assert_array_equal(smooth.keypoints_2d, raw.keypoints_2d)
        else:
            assert np.abs(smooth.keypoints_2d - raw.keypoints_2d).max() > 1e-3


def test_the_first_smoothed_sample_after_a_relabel_is_the_raw_one(data_dir):
    """A relabelled track is a different reconstruction (the mirror crop): its filter starts again."""
    box = np.array(RIGHT_BOX, np.float32)
    script = [[det("Right", box)]] * 3 + [[det("Left", box)]] * 3  # MediaPipe changes its mind for good
    reconstructor = HAMER(data_dir=data_dir).reconstructor
    raw = VideoHands(ScriptedDetector(script), reconstructor, HandTracker(label_hold=2))
    smooth = VideoHands(ScriptedDetector(script), reconstructor, HandTracker(label_hold=2),
                        make_filter=lambda: OneEuroFilter(1.0, 10.0))
    rng = np.random.default_rng(4)
    for i in range(6):
        img = rng.integers(0, 255, size=SHAPE, dtype=np.uint8)  # a new image: new joints every frame
        (r,) = raw(img, 33 * i).hands
        (s,) = smooth(img, 33 * i).hands
        assert r.label == s.label == ("Right" if i < 4 else "Left")  # the switch lands on the 2nd "Left" frame
        if i in (0, 4):  # a new filter: the first sample passes through
            np.testing.assert_array_equal(s.keypoints_3d, r.keypoints_3d)
        else:  # filtered
            assert np.abs(s.keypoints_3d - r.keypoints_3d).max() > 1e-6
