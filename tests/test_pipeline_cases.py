"""hamer.pipeline's rules on their own, with a scripted network and detector: the best detection per label, box
checks at the image's edges and their messages, the config's crop settings, batches with empty frames, the
left-hand un-mirroring and HaMeR's full-image camera written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hamer.camera import cam_crop_to_full
from hamer.configs import default_config
from hamer.detection import HandDetection
from hamer.pipeline import (
    MAX_COORDINATE,
    Reconstructor,
    best_per_label,
    box_problem,
    check_boxes,
    find_hands,
    make_inputs,
    predict_frame,
)
from hamer.results import Camera, Hand

W, H = 320, 240  # the test image: landscape, so that max(W, H) = W


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _detection(label: str, score: float, x: float, source: str = "hand") -> HandDetection:
    box = np.array([x, 10.0, x + 40.0, 60.0], dtype=np.float32)
    return HandDetection(label, score, box, np.array([[x, 10.0], [x + 40.0, 60.0]], dtype=np.float32), source)


class ScriptedNetwork:
    """Outputs that depend on each crop (its mean pixel), so that a batch's rows can be told apart."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(inputs.shape)
        n = len(inputs)
        m = inputs.reshape(n, -1).mean(1).astype(np.float32)[:, None]  # (N, 1), one signature per crop
        joints = np.linspace(-0.05, 0.05, 63, dtype=np.float32).reshape(1, 21, 3) + m[:, :, None] * 0.01
        verts = np.linspace(-0.08, 0.08, 778 * 3, dtype=np.float32).reshape(1, 778, 3) + m[:, :, None] * 0.01
        return {
            "pred_cam": np.concatenate([0.9 + 0.01 * m, 0.05 + 0.01 * m, -0.03 + 0.01 * m], 1),
            "pred_cam_t": np.tile(np.float32([0.1, 0.2, 50.0]), (n, 1)) + m,
            "focal_length": np.full((n, 2), 5000.0, dtype=np.float32),
            "pred_keypoints_3d": joints,
            "pred_vertices": verts,
            "pred_keypoints_2d": joints[:, :, :2] * 0.5,
            "global_orient": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1, 1)) * (1 + m[:, :, None, None]),
            "hand_pose": np.tile(np.eye(3, dtype=np.float32), (n, 15, 1, 1)),
            "betas": np.tile(np.arange(10, dtype=np.float32), (n, 1)) + m,
        }


class ScriptedDetector:
    def __init__(self, detections: list[HandDetection]) -> None:
        self.detections = detections
        self.timestamps: list[int | None] = []

    def detect(self, img_bgr: np.ndarray, timestamp_ms: int | None = None, frame=None) -> list[HandDetection]:
        self.timestamps.append(timestamp_ms)
        return list(self.detections)


# --- best_per_label -------------------------------------------------------------------------------------------

def test_best_per_label_keeps_the_most_confident_of_each_label_right_first():
    dets = [_detection("Left", 0.6, 0), _detection("Right", 0.7, 50), _detection("Left", 0.9, 100, "pose"),
            _detection("Right", 0.8, 150), _detection("Right", 0.75, 200)]
    hands = best_per_label(dets, (H, W, 3))
    assert [(h.label, h.score, h.detector, h.box[0]) for h in hands] == [
        ("Right", pytest.approx(0.8), "hand", 150.0), ("Left", pytest.approx(0.9), "pose", 100.0)]
    assert hands[1].detected_label == "Left" and hands[1].track_id == -1 and not hands[1].reconstructed
    np.testing.assert_array_equal(hands[1].landmarks, [[100, 10], [140, 60]])
    lefts = best_per_label([_detection("Left", 0.3, 0), _detection("Left", 0.4, 60)], (H, W, 3))
    assert [(h.label, h.box[0]) for h in lefts] == [("Left", 60.0)]  # a Left hand alone
    assert best_per_label([], (H, W, 3)) == []


def test_equal_scores_keep_the_first_detection():
    hands = best_per_label([_detection("Right", 0.5, 0), _detection("Right", 0.5, 100)], (H, W, 3))
    assert [h.box[0] for h in hands] == [0.0]


# --- find_hands / predict_frame / frame_result -----------------------------------------------------------------

def test_detector_gets_the_timestamp_and_select_picks_the_hands():
    dets = [_detection("Right", 0.9, 0), _detection("Left", 0.8, 100)]
    detector = ScriptedDetector(dets)
    seen = []

    def only_left(detections, image_shape):
        seen.append((detections, image_shape))
        return [Hand.from_detection(d) for d in detections if d.label == "Left"]

    result = predict_frame(_image(), None, detector=detector, select=only_left, timestamp_ms=1234)
    assert detector.timestamps == [1234]
    assert seen == [(tuple(dets), (H, W, 3))]
    assert [h.label for h in result.hands] == ["Left"] and not result.hands[0].reconstructed
    assert result.detections == tuple(dets) and result.camera is None and result.image_size == (W, H)
    default = predict_frame(_image(), None, detector=ScriptedDetector(dets))  # best_per_label by default
    assert [h.label for h in default.hands] == ["Right", "Left"] and default.detections == tuple(dets)
    hands, detections = find_hands(_image(), detector=detector, timestamp_ms=99)
    assert detector.timestamps[-1] == 99 and detections == tuple(dets) and len(hands) == 2


def test_user_boxes_have_no_detections_and_no_detector_is_an_error():
    result = predict_frame(_image(), None, boxes={"Left": [10, 10, 50, 60]})
    assert result.detections is None and result.camera is None and [h.label for h in result.hands] == ["Left"]
    with pytest.raises(ValueError, match="^predict_frame needs boxes or a detector$"):
        find_hands(_image())
    with pytest.raises(ValueError, match="^predict_frame needs boxes or a detector$"):
        predict_frame(_image(), None)


# --- check_boxes / box_problem ---------------------------------------------------------------------------------

@pytest.mark.parametrize("box, accepted", [
    ([-40, 10, 0, 50], False), ([-40, 10, 0.5, 50], True),  # x2 at the left edge / just inside it
    ([10, -40, 50, 0], False), ([10, -40, 50, 0.5], True),  # y2 at the top edge
    ([W, 10, W + 40, 50], False), ([W - 0.5, 10, W + 40, 50], True),  # x1 at the right edge
    ([10, H, 50, H + 40], False), ([10, H - 0.5, 50, H + 40], True),  # y1 at the bottom edge
])
def test_a_box_touching_the_image_only_at_its_edge_lies_outside(box, accepted):
    problem = box_problem(np.array(box, dtype=np.float64), (H, W, 3))
    assert problem == (None if accepted else f"lies entirely outside the {W}x{H} image")


def test_coordinate_limit_is_inclusive():
    assert MAX_COORDINATE == 2**24
    assert box_problem(np.array([0.0, 0.0, 2.0**24, 10.0]), (H, W)) is None
    assert box_problem(np.array([-(2.0**24), 0.0, 10.0, 10.0]), (H, W)) is None
    assert box_problem(np.array([0.0, 0.0, 2.0**24 + 2, 10.0]), (H, W)) == "has a coordinate beyond +-16777216 px"


@pytest.mark.parametrize("boxes, message", [
    ([[0, 0, 10, 10]], r"^boxes must be a dict \{'Right'\|'Left': \[x1, y1, x2, y2\]\}, got list$"),
    ({"left": [0, 0, 10, 10]}, r"^hand label must be 'Right' or 'Left', got 'left'$"),
    ({"Right": ["a", "b", "c", "d"]}, r"^Right box must be 4 numbers \[x1, y1, x2, y2\], got \['a', 'b', 'c', 'd'\]$"),
    ({"Left": [0, 0, 10]}, r"^Left box must be 4 numbers \[x1, y1, x2, y2\], got 3$"),
    ({"Left": [10, 0, 10, 10]}, r"^Left box \[10\.0, 0\.0, 10\.0, 10\.0\] is inverted or has zero size "
                                r"\(need x2 > x1, y2 > y1\)$"),
    ({"Right": [0, 0, float("nan"), 10]}, r"^Right box \[0\.0, 0\.0, nan, 10\.0\] has a NaN or infinite coordinate$"),
    ({"Right": [0, 0, 10, float("inf")]}, r"has a NaN or infinite coordinate$"),
])
def test_bad_boxes_are_named_with_their_problem(boxes, message):
    with pytest.raises(ValueError, match=message):
        check_boxes(boxes, (H, W, 3))


def test_boxes_as_tensors_and_nested_arrays_become_float32_4_vectors():
    grad = torch.tensor([10.0, 20.0, 50.0, 60.0], requires_grad=True)  # np.asarray of it would raise
    nested = np.array([[1, 2, 30, 40]], dtype=np.int64)  # (1, 4): flattened
    checked = check_boxes({"Right": grad, "Left": nested}, (H, W, 3))
    assert checked["Right"].dtype == checked["Left"].dtype == np.float32
    assert checked["Right"].shape == checked["Left"].shape == (4,)
    np.testing.assert_array_equal(checked["Right"], [10, 20, 50, 60])
    np.testing.assert_array_equal(checked["Left"], [1, 2, 30, 40])


# --- make_inputs: the config's crop settings -------------------------------------------------------------------

def test_crops_follow_the_configs_bbox_shape_and_image_size():
    cfg = default_config()
    box = np.array([[10.0, 20.0, 50.0, 40.0]], dtype=np.float32)  # w 40, h 20, centre (30, 30)
    inputs, crops = make_inputs(_image(), box, np.array([True]), cfg, 2.0)
    assert inputs.shape == (1, 3, 256, 256)
    assert crops[0].size == pytest.approx(2 * 40 * 4 / 3, rel=1e-6)  # 192:256 aspect: h -> 4/3 w
    cfg.MODEL.BBOX_SHAPE = [256, 256]  # square crops: side = rescale * max(w, h) = 80
    cfg.MODEL.IMAGE_SIZE = 64
    inputs, crops = make_inputs(_image(), box, np.array([False]), cfg, 2.0)
    assert inputs.shape == (1, 3, 64, 64) and inputs.dtype == np.float32
    assert crops[0].size == 80.0 and crops[0].flip
    np.testing.assert_array_equal(crops[0].center, [30, 30])


def test_boxes_and_right_flags_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="zip"):
        make_inputs(_image(), np.zeros((2, 4), dtype=np.float32) + [0, 0, 10, 10], np.array([True]),
                    default_config(), 2.0)


# --- Reconstructor ---------------------------------------------------------------------------------------------

def _hamer_cam_crop_to_full(cam_bbox, box_center, box_size, img_size, focal_length):
    """HaMeR's ``cam_crop_to_full`` (hamer/utils/renderer.py @ 3a01849), as its demo calls it: float32 tensors."""
    img_w, img_h = img_size[:, 0], img_size[:, 1]
    cx, cy, b = box_center[:, 0], box_center[:, 1], box_size
    w_2, h_2 = img_w / 2., img_h / 2.
    bs = b * cam_bbox[:, 0] + 1e-9
    tz = 2 * focal_length / bs
    tx = (2 * (cx - w_2) / bs) + cam_bbox[:, 1]
    ty = (2 * (cy - h_2) / bs) + cam_bbox[:, 2]
    return torch.stack([tx, ty, tz], dim=-1)


def test_cam_crop_to_full_in_numpy_is_the_originals_torch_formula_bit_for_bit():
    """float32 values over wide ranges (scales near zero, boxes off the image, any image size and focal length):
    the numpy formula the pipeline runs gives the original's torch results exactly."""
    rng = np.random.default_rng(3)
    n = 20000
    cam = np.stack([rng.uniform(-0.5, 3, n), rng.uniform(-2, 2, n), rng.uniform(-2, 2, n)], 1).astype(np.float32)
    cam[:50, 0] = 0  # a zero scale: the 1e-9 guard decides the depth
    center = rng.uniform(-500, 3000, (n, 2)).astype(np.float32)
    size = rng.uniform(1, 2000, n).astype(np.float32)
    img = rng.integers(16, 4000, (n, 2)).astype(np.float32)
    for focal in (np.float32(5000 / 256 * 640), np.float32(rng.uniform(100, 50000))):
        expected = _hamer_cam_crop_to_full(*map(torch.from_numpy, (cam, center, size, img)), torch.tensor(focal))
        got = cam_crop_to_full(cam, center, size, img, focal)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected.numpy())


def test_left_hands_are_unmirrored_and_placed_with_hamers_camera():
    network = ScriptedNetwork()
    rec = Reconstructor(network, default_config())  # rescale 2.0 by default
    img = _image()
    hands = check_boxes({"Right": [60, 50, 140, 150], "Left": [200, 80, 260, 140]}, img.shape)
    placed = rec(img, [Hand(label=k, box=v) for k, v in hands.items()])
    net = network(make_inputs(img, np.stack(list(hands.values())), np.array([True, False]), default_config(),
                              2.0)[0])
    # crop sides by hand: Right box 80 x 100 -> 2 * max(100, 4/3 * 80) = 213.33; Left 60 x 60 -> 2 * 80 = 160
    np.testing.assert_allclose([h.box_size for h in placed], [2 * 80 * 4 / 3, 160.0], rtol=1e-6)
    np.testing.assert_array_equal([h.box_center for h in placed], [[100, 100], [230, 110]])
    right, left = placed
    np.testing.assert_array_equal(right.keypoints_3d, net["pred_keypoints_3d"][0])
    np.testing.assert_array_equal(left.keypoints_3d[:, 0], -net["pred_keypoints_3d"][1, :, 0])
    np.testing.assert_array_equal(left.keypoints_3d[:, 1:], net["pred_keypoints_3d"][1, :, 1:])
    np.testing.assert_array_equal(left.vertices[:, 0], -net["pred_vertices"][1, :, 0])
    np.testing.assert_array_equal(left.vertices[:, 1:], net["pred_vertices"][1, :, 1:])
    np.testing.assert_array_equal(left.raw.pred_cam, net["pred_cam"][1])  # raw: still mirrored
    np.testing.assert_array_equal(left.mano.betas, net["betas"][1])
    # HaMeR demo: pred_cam[:, 1] *= 2 * right - 1; focal 5000 / 256 * max(W, H); float32 throughout
    cam = torch.from_numpy(net["pred_cam"].copy())
    cam[:, 1] *= torch.tensor([1.0, -1.0])
    full = _hamer_cam_crop_to_full(cam, torch.tensor([[100.0, 100.0], [230.0, 110.0]]),
                                   torch.tensor([h.box_size for h in placed]),  # float32 sides, as the crop's
                                   torch.tensor([[W, H], [W, H]], dtype=torch.float32),
                                   5000 / 256 * torch.tensor([W, H], dtype=torch.float32).max()).numpy()
    np.testing.assert_array_equal(np.stack([h.cam_t for h in placed]), full)  # bit-exact, as the original
    f = 5000 / 256 * W
    for hand, t in zip(placed, full, strict=True):
        p = hand.keypoints_3d.astype(np.float64) + t
        np.testing.assert_allclose(hand.keypoints_2d, f * p[:, :2] / p[:, 2:] + [W / 2, H / 2], rtol=1e-6)
        assert hand.keypoints_2d.dtype == hand.cam_t.dtype == np.float32


def test_a_batch_with_empty_frames_equals_its_frames_one_at_a_time():
    network = ScriptedNetwork()
    rec = Reconstructor(network, default_config())
    frames = [(_image(1), [Hand(label="Right", box=np.float32([60, 50, 140, 150]))]), (_image(2), []),
              (_image(3), [Hand(label="Left", box=np.float32([200, 80, 260, 140])),
                           Hand(label="Right", box=np.float32([20, 20, 90, 120]))]),
              (_image(4), [])]
    batched = rec.batch(frames)
    assert network.calls == [(3, 3, 256, 256)]  # one network call for the whole batch
    assert [len(b) for b in batched] == [1, 0, 2, 0] and batched[1] == [] and batched[3] == []
    for (img, hands), got in zip(frames, batched, strict=True):
        alone = rec(img, hands)
        assert [h.label for h in got] == [h.label for h in alone]
        for a, b in zip(alone, got, strict=True):
            np.testing.assert_array_equal(b.keypoints_3d, a.keypoints_3d)
            np.testing.assert_array_equal(b.cam_t, a.cam_t)
    assert rec.batch([(_image(), [])]) == [[]] and len(network.calls) == 3  # no hands: no network call


def test_cameras_from_the_config_and_from_a_callable():
    cfg = default_config()
    cfg.MODEL.IMAGE_SIZE = 128
    cfg.EXTRA.FOCAL_LENGTH = 4000
    rec = Reconstructor(ScriptedNetwork(), cfg)
    assert rec.rescale_factor == 2.0
    assert rec.camera((W, H)) == Camera(10000.0, 10000.0, 160.0, 120.0)  # 4000 / 128 * 320
    asked = []

    def spec(size):
        asked.append(size)
        return Camera(700.0, 710.0, size[0] / 2, size[1] / 2)

    rec = Reconstructor(ScriptedNetwork(), default_config(), camera=spec)
    result = predict_frame(_image(), rec, boxes={"Right": [60, 50, 140, 150]})
    assert asked[0] == (W, H) and result.camera == Camera(700.0, 710.0, 160.0, 120.0)
