"""Property-based tests (hypothesis) of the crop, the camera and the box rules, over varied shapes and settings."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hamer.camera import cam_crop_to_full, cam_crop_to_pinhole, perspective_projection
from hamer.cropping import box_to_crop, crop_images
from hamer.pipeline import box_problem, check_boxes
from hamer.tracking import HandTracker, box_iou

from test_tracking import det

FAST = settings(max_examples=60, deadline=None)
coords = st.floats(-500, 1500, allow_nan=False, width=32)
sizes = st.floats(1, 800, allow_nan=False, width=32)


@FAST
@given(x1=coords, y1=coords, w=sizes, h=sizes, rescale=st.floats(0.5, 4.0), right=st.booleans())
def test_crop_is_rescale_times_the_box_grown_to_three_by_four(x1, y1, w, h, rescale, right):
    box = np.float32([x1, y1, x1 + w, y1 + h])
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    crop = box_to_crop(box, right, rescale)
    assert np.allclose(crop.center, [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], rtol=1e-6, atol=1e-3)
    assert np.isclose(crop.size, rescale * max(bh, bw * 256 / 192), rtol=1e-5)
    assert crop.flip is (not right)


@FAST
@given(height=st.integers(40, 300), width=st.integers(40, 300), u=st.floats(0.1, 0.9), v=st.floats(0.1, 0.9),
       side=st.integers(8, 60), right=st.booleans())
def test_crop_centre_pixel_is_the_box_centre_pixel(height, width, u, v, side, right):
    """Any image shape (portrait, landscape, square), boxes anywhere (near every edge): patch (128, 128) is the
    image at the box centre (mirrored for left hands), or the zero border when that lies outside."""
    img = np.random.default_rng(height * 1000 + width).integers(1, 256, size=(height, width, 3), dtype=np.uint8)
    cx, cy = round(u * width), round(v * height)
    box = np.float32([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    crop = box_to_crop(box, right, 1.0)
    assert crop.size <= 563  # unblurred: exact pixels
    patch = crop_images(img, [crop])[0]
    inside = 0 <= cx < width and 0 <= cy < height
    expected = img[cy, cx] if inside else np.zeros(3, np.uint8)
    np.testing.assert_array_equal(patch[128, 128], expected)


@FAST
@given(s=st.floats(0.05, 3), tx=st.floats(-1, 1), ty=st.floats(-1, 1), cx=st.floats(-100, 1000),
       cy=st.floats(-100, 1000), b=st.floats(10, 800), w=st.integers(32, 2000), h=st.integers(32, 2000),
       f=st.floats(100, 50000))
def test_the_crop_origin_lands_where_the_weak_perspective_camera_puts_it(s, tx, ty, cx, cy, b, w, h, f):
    """Derived by hand from cam_crop_to_full: the model origin projects to centre + b * s * (tx, ty) / 2, whatever
    the image size and focal length (the full camera reproduces the crop camera at the origin)."""
    t = cam_crop_to_full(np.array([[s, tx, ty]]), np.array([[cx, cy]]), np.array([b]), np.array([[w, h]], float),
                         np.float64(f))
    assert np.isclose(float(t[0, 2]), 2 * f / (b * s), rtol=1e-7)  # the original adds 1e-9 to b * s
    focal = torch.full((1, 2), f, dtype=torch.float64)
    centre = torch.tensor([[w / 2, h / 2]], dtype=torch.float64)
    uv = perspective_projection(torch.zeros(1, 1, 3, dtype=torch.float64), torch.from_numpy(t), focal, centre)[0, 0]
    np.testing.assert_allclose(uv.numpy(), [cx + b * s * tx / 2, cy + b * s * ty / 2], rtol=1e-7, atol=1e-6)


@FAST
@given(s=st.floats(0.05, 3), tx=st.floats(-1, 1), ty=st.floats(-1, 1), bx=st.floats(-100, 1000),
       by=st.floats(-100, 1000), b=st.floats(10, 800), fx=st.floats(100, 50000), fy=st.floats(100, 50000),
       cx=st.floats(-200, 2000), cy=st.floats(-200, 2000))
def test_the_crop_origin_lands_on_its_pixel_under_any_pinhole_camera(s, tx, ty, bx, by, b, fx, fy, cx, cy):
    """The user's camera (fx, fy, cx, cy): the model origin still projects to box centre + b * s * (tx, ty) / 2, at
    depth 2 sqrt(fx fy) / (b s) (hand-derived); with fx = fy = f and the image centre it is cam_crop_to_full."""
    cam, centre, size = np.array([[s, tx, ty]]), np.array([[bx, by]]), np.array([b])
    t = cam_crop_to_pinhole(cam, centre, size, fx, fy, cx, cy)
    assert t.shape == (1, 3) and np.isclose(float(t[0, 2]), 2 * np.sqrt(fx * fy) / (b * s), rtol=1e-7)
    uv = perspective_projection(torch.zeros(1, 1, 3, dtype=torch.float64), torch.from_numpy(t),
                                torch.tensor([[fx, fy]], dtype=torch.float64),
                                torch.tensor([[cx, cy]], dtype=torch.float64))[0, 0]
    np.testing.assert_allclose(uv.numpy(), [bx + b * s * tx / 2, by + b * s * ty / 2], rtol=1e-7, atol=1e-6)
    full = cam_crop_to_full(cam, centre, size, np.array([[2 * cx, 2 * cy]]), np.float64(fx))
    np.testing.assert_allclose(cam_crop_to_pinhole(cam, centre, size, fx, fx, cx, cy), full, rtol=1e-9, atol=1e-9)


@FAST
@given(points=st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(1, 10)), min_size=1, max_size=5),
       t=st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(0, 5)),
       f=st.floats(10, 5000), c=st.tuples(st.floats(0, 1000), st.floats(0, 1000)))
def test_pinhole_projection(points, t, f, c):
    p = np.array(points)
    uv = perspective_projection(torch.from_numpy(p)[None], torch.tensor([t], dtype=torch.float64),
                                torch.full((1, 2), f, dtype=torch.float64), torch.tensor([c], dtype=torch.float64))
    q = p + np.array(t)
    np.testing.assert_allclose(uv[0].numpy(), f * q[:, :2] / q[:, 2:] + np.array(c), rtol=1e-9, atol=1e-9)


box_values = st.one_of(st.floats(-100, 400, width=32), st.sampled_from([0.0, 200.0, 300.0, np.nan, np.inf, -np.inf]))


@settings(max_examples=200, deadline=None)
@given(box=st.tuples(box_values, box_values, box_values, box_values))
def test_box_rule_is_finite_ordered_and_overlapping(box):
    """Independent statement of the rule: a positive-area box whose intersection with the 300x200 image has area."""
    x1, y1, x2, y2 = box
    finite = np.isfinite(box).all()
    overlap_w = min(x2, 300) - max(x1, 0)
    overlap_h = min(y2, 200) - max(y1, 0)
    ok = bool(finite and x2 > x1 and y2 > y1 and overlap_w > 0 and overlap_h > 0)
    assert (box_problem(np.array(box), (200, 300, 3)) is None) == ok
    try:
        check_boxes({"Left": list(box)}, (200, 300, 3))
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == ok


@FAST
@given(a=st.tuples(coords, coords, sizes, sizes), b=st.tuples(coords, coords, sizes, sizes))
def test_iou_is_symmetric_bounded_and_one_on_itself(a, b):
    a = np.float64([a[0], a[1], a[0] + a[2], a[1] + a[3]])
    b = np.float64([b[0], b[1], b[0] + b[2], b[1] + b[3]])
    assert 0 <= box_iou(a, b) <= 1 + 1e-12 and np.isclose(box_iou(a, b), box_iou(b, a))
    assert np.isclose(box_iou(a, a), 1.0)
    if a[2] <= b[0] or b[2] <= a[0]:
        assert box_iou(a, b) == 0


frame_dets = st.lists(st.tuples(st.sampled_from(["Right", "Left"]), st.integers(0, 5), st.floats(0.1, 1),
                                st.sampled_from(["hand", "pose"])), max_size=4)


@FAST
@given(frames=st.lists(frame_dets, min_size=1, max_size=12))
def test_tracker_invariants(frames):
    """Whatever MediaPipe says: at most one Right and one Left per frame, Right first, ids never shared, each
    output's box is one of this frame's detections."""
    tracker = HandTracker(label_hold=2, max_missed=2)
    for frame in frames:
        dets = [det(label, [60 * pos, 50, 60 * pos + 80, 130], score, source) for label, pos, score, source in frame]
        hands = tracker.update(dets, (240, 400, 3))
        labels = [h.label for h in hands]
        assert labels == sorted(set(labels), key=["Right", "Left"].index)
        assert len({h.track_id for h in hands}) == len(hands)
        assert all(any(np.array_equal(h.box, d.box) and h.score == d.score for d in dets) for h in hands)
        assert len({t.label for t in tracker.tracks}) == len(tracker.tracks)
