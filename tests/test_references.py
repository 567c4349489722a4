"""Expectations from independent references: the original HaMeR code's tables and hand-computed values.

Nothing here derives its expected value from the module under test. Sources:

* geopavlakos/hamer @ 3a01849 ``hamer/models/mano_wrapper.py``: ``mano_to_openpose = [0, 13, 14, 15, 16, 1, 2, 3,
  17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]`` indexing ``cat([16 MANO joints, fingertips])``, the fingertips
  being ``vertex_ids['mano'].values()`` of smplx 0.1.28 (pinned by the original's setup.py):
  ``{'thumb': 744, 'index': 320, 'middle': 443, 'ring': 554, 'pinky': 671}``.
* ``hamer/datasets/vitdet_dataset.py`` + ``utils.expand_to_aspect_ratio`` (crop), ``demo.py`` line 143
  (``scaled_focal_length = FOCAL_LENGTH / IMAGE_SIZE * img_size.max()``), ``hamer/utils/renderer.py``
  ``cam_crop_to_full``: the literal numbers below were worked out by hand from those formulas.
"""

from __future__ import annotations

import numpy as np
import pytest
import smplx
import torch
from smplx.utils import Struct
from yacs.config import CfgNode

from hamer.camera import cam_crop_to_pinhole
from hamer.cropping import box_to_crop, crop_images
from hamer.detection import pose_hand_box
from hamer.hamer_module import HAMER
from hamer.models.mano import MANO, MANO_KEYS
from hamer.pipeline import place_hands
from hamer.results import Camera

from synthetic import mano_arrays

# OpenPose joint k comes from MANO joint "Jn" or MANO vertex "Vn" (written out from the original, see above).
OPENPOSE_SOURCES = ["J0",
                    "J13", "J14", "J15", "V744",  # thumb
                    "J1", "J2", "J3", "V320",  # index
                    "J4", "J5", "J6", "V443",  # middle
                    "J10", "J11", "J12", "V554",  # ring
                    "J7", "J8", "J9", "V671"]  # pinky
TIPS = {"V744": 15, "V320": 3, "V443": 6, "V554": 12, "V671": 9}  # tip vertex -> the last joint of its finger


def _mano_data(seed: int, rigid_tips: bool = False) -> dict[str, np.ndarray]:
    data = {k: np.asarray(v) for k, v in mano_arrays(seed).items() if k in MANO_KEYS}
    if rigid_tips:  # no pose blend shapes, each tip skinned to its own finger's last joint only
        data["posedirs"] = np.zeros_like(data["posedirs"])
        for name, joint in TIPS.items():
            data["weights"][int(name[1:])] = np.eye(16)[joint]
    return data


def _rotations(aa: torch.Tensor) -> dict[str, torch.Tensor]:
    rot = smplx.lbs.batch_rodrigues(aa.reshape(-1, 3)).reshape(aa.shape[0], 16, 3, 3)
    return {"global_orient": rot[:, :1], "hand_pose": rot[:, 1:], "betas": torch.zeros(aa.shape[0], 10)}


def test_every_openpose_joint_comes_from_the_original_source():
    data = _mano_data(4)
    reference = smplx.MANOLayer(model_path="", data_struct=Struct(**data))  # plain smplx: 16 joints, no map
    params = _rotations(0.4 * torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(3)))
    params["betas"] = torch.randn(2, 10, generator=torch.Generator().manual_seed(4))
    ref = reference(**params)
    joints = MANO(data)(**params).joints
    assert joints.shape == (2, 21, 3)
    for k, source in enumerate(OPENPOSE_SOURCES):
        table = ref.joints if source[0] == "J" else ref.vertices
        torch.testing.assert_close(joints[:, k], table[:, int(source[1:])], rtol=0, atol=0,
                                   msg=f"OpenPose joint {k} should be {source}")


def test_rotating_the_thumb_base_moves_only_the_thumb_beyond_it():
    data = _mano_data(6, rigid_tips=True)
    mano = MANO(data)
    aa = torch.zeros(1, 16, 3)
    rest = mano(**_rotations(aa)).joints[0]
    aa[0, 13] = torch.tensor([0.0, 0.0, 0.8])  # MANO joint 13: the thumb's first joint
    bent = mano(**_rotations(aa)).joints[0]
    moved = {k for k in range(21) if not torch.allclose(bent[k], rest[k], rtol=0, atol=1e-7)}
    assert moved == {2, 3, 4}  # OpenPose 1 (the rotated joint itself) stays; its children and the tip move


@pytest.mark.parametrize(("box", "right", "rescale", "center", "size"), [
    # w=40, h=80, x2: 80x160; h/w=2 >= 256/192 -> width grows to 160*192/256=120; side max(120,160)=160
    ([10, 20, 50, 100], True, 2.0, (30, 60), 160.0),
    # same box, rescale 2.5: 100x200 -> 150x200 -> 200
    ([10, 20, 50, 100], False, 2.5, (30, 60), 200.0),
    # landscape w=100, h=30, x1.5: 150x45; h/w=0.3 < 4/3 -> height grows to 150*256/192=200 -> 200
    ([0, 0, 100, 30], True, 1.5, (50, 15), 200.0),
    # square 60x60, x1: height grows to 80 -> 80
    ([-20, 5, 40, 65], False, 1.0, (10, 35), 80.0),
])
def test_crop_centre_and_size_by_hand(box, right, rescale, center, size):
    crop = box_to_crop(np.array(box, dtype=np.float32), right, rescale)
    np.testing.assert_array_equal(crop.center, np.float32(center))
    assert crop.size == pytest.approx(size, rel=1e-6)  # float32, as the original (60 / 200 * 200 != 60)
    assert crop.flip is (not right)


def test_crop_pixels_by_hand_right_and_left():
    """A 256-px crop is a pure shift: patch[v, u] = img[cy + v - 128, cx + u - 128] (Left: the mirror)."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(420, 300, 3), dtype=np.uint8)  # portrait
    cx, cy = 150, 210
    box = np.array([cx - 40, cy - 64, cx + 40, cy + 64], dtype=np.float32)  # 128 high: side 2 * 128 = 256
    right, left = crop_images(img, [box_to_crop(box, True), box_to_crop(box, False)])
    np.testing.assert_array_equal(right[40:216, 40:216], img[cy - 88:cy + 88, cx - 88:cx + 88])
    np.testing.assert_array_equal(left[40:216, 40:216], img[cy - 88:cy + 88, cx + 88:cx - 88:-1])
    # the crop reaches past the image top (cy - 128 < 0 would not; shift the box up): zero border
    top = crop_images(img, [box_to_crop(box - np.float32([0, 150, 0, 150]), True)])[0]
    assert (top[:68] == 0).all() and (top[68:] == img[:188, cx - 128:cx + 128]).all()


def test_rescale_factor_reaches_the_crop(data_dir):
    """rescale r on box B crops like the default 2.0 on B scaled by r/2 about its centre."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    box = [60.0, 50.0, 140.0, 150.0]  # centre (100, 100), 80 x 100
    wide = HAMER(data_dir=data_dir, rescale_factor=3.0).process(img, {"Left": box})[0]["Left"]
    scaled = HAMER(data_dir=data_dir).process(img, {"Left": [40.0, 25.0, 160.0, 175.0]})[0]["Left"]
    default = HAMER(data_dir=data_dir).process(img, {"Left": box})[0]["Left"]
    np.testing.assert_allclose(wide, scaled, rtol=0, atol=1e-6)
    assert np.abs(wide - default).max() > 1e-4


def hand_outputs(net, rights, crops, shape, cfg):
    """The placement step with HaMeR demo's camera (focal FOCAL_LENGTH / IMAGE_SIZE * max(W, H))."""
    size = (shape[1], shape[0])
    camera = Camera.hamer_default(size, float(cfg.EXTRA.FOCAL_LENGTH), int(cfg.MODEL.IMAGE_SIZE))
    out = place_hands(net, rights, crops, size, camera, camera)
    return {**out, "cam_t_full": out["cam_t"], "focal_length_full": camera.fx}


def _cfg() -> CfgNode:
    return CfgNode({"EXTRA": {"FOCAL_LENGTH": 5000}, "MODEL": {"IMAGE_SIZE": 256}})


class _Crop:
    def __init__(self, center, size):
        self.center, self.size = np.float32(center), float(size)


@pytest.mark.parametrize(("shape", "focal"), [
    ((640, 480, 3), 12500.0),  # portrait: 5000 / 256 * 640
    ((480, 640, 3), 12500.0),  # landscape
    ((300, 300, 3), 5859.375),  # square: 5000 / 256 * 300
    ((256, 1024, 3), 20000.0),
])
def test_focal_length_uses_the_longer_side(shape, focal):
    net = {"pred_keypoints_3d": np.zeros((1, 21, 3), np.float32), "pred_vertices": np.zeros((1, 778, 3), np.float32),
           "pred_cam": np.float32([[1.0, 0.0, 0.0]])}
    out = hand_outputs(net, np.array([True]), [_Crop((10, 10), 100)], shape, _cfg())
    assert float(out["focal_length_full"]) == focal


def test_camera_and_projection_by_hand_portrait_right_and_left():
    """Portrait 480x640 (W x H), f = 12500; box centre (100, 200), side 160; crop camera s=0.5, tx=0.1, ty=-0.2.

    bs = 160 * 0.5 = 80; tz = 2 f / bs = 312.5; tx = 2 (100 - 240) / 80 + 0.1 = -3.4 (Left: tx -> -0.1: -3.6);
    ty = 2 (200 - 320) / 80 - 0.2 = -3.2. A joint at the origin lands at f tx / tz + 240 = 104 (Left: 96),
    f ty / tz + 320 = 192. A Left joint's x is negated back: (0.01, 0.02, 0) -> (-0.01, 0.02, 0); that joint lands
    at 40 * (0.01 - 3.4) + 240 = 104.4 (Left: 40 * (-0.01 - 3.6) + 240 = 95.6), 40 * (0.02 - 3.2) + 320 = 192.8.
    """
    kp = np.zeros((2, 21, 3), np.float32)
    kp[:, 1] = (0.01, 0.02, 0.0)
    net = {"pred_keypoints_3d": kp, "pred_vertices": np.zeros((2, 778, 3), np.float32),
           "pred_cam": np.float32([[0.5, 0.1, -0.2], [0.5, 0.1, -0.2]])}
    out = hand_outputs(net, np.array([True, False]), [_Crop((100, 200), 160)] * 2, (640, 480, 3), _cfg())
    np.testing.assert_allclose(out["cam_t_full"], [[-3.4, -3.2, 312.5], [-3.6, -3.2, 312.5]], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints_2d"][:, 0], [[104, 192], [96, 192]], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints_2d"][:, 1], [[104.4, 192.8], [95.6, 192.8]], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints_3d"][:, 1], np.float32([[0.01, 0.02, 0], [-0.01, 0.02, 0]]), rtol=0)
    np.testing.assert_allclose(out["box_center"], [[100, 200], [100, 200]])
    np.testing.assert_allclose(out["box_size"], [160, 160])


@pytest.mark.parametrize(("points", "box"), [
    # wrist (90,100), pinky (130,160), index (70,160), thumb (60,120): knuckle m = (2*index + pinky)/3 = (90,160);
    # half = |m - wrist| = 60 -> square [30, 100, 150, 220]; the four points lie inside
    ([[90, 100], [130, 160], [70, 160], [60, 120]], [30, 100, 150, 220]),
    # a thumb sticking out left and up grows the square to contain it
    ([[90, 100], [130, 160], [70, 160], [20, 80]], [20, 80, 150, 220]),
    # a hand pointing right: wrist (0,0), pinky (30,12), index (30,-6): m = (30,0), half 30 -> [0,-30,60,30]
    ([[0, 0], [30, 12], [30, -6], [10, -10]], [0, -30, 60, 30]),
])
def test_pose_fallback_box_by_hand(points, box):
    np.testing.assert_array_equal(pose_hand_box(np.array(points, dtype=np.float32)), np.float32(box))


def test_zero_scale_camera_stays_finite():
    """The original adds 1e-9 to ``box_size * s``: a zero scale gives a huge but finite depth, not inf or NaN."""
    net = {"pred_keypoints_3d": np.zeros((1, 21, 3), np.float32), "pred_vertices": np.zeros((1, 778, 3), np.float32),
           "pred_cam": np.float32([[0.0, 0.0, 0.0]])}
    out = hand_outputs(net, np.array([True]), [_Crop((150, 150), 100)], (300, 300, 3), _cfg())
    np.testing.assert_allclose(out["cam_t_full"][0], [0, 0, 2 * 5859.375 / 1e-9], rtol=1e-6)


def test_pinhole_camera_translation_by_hand():
    """The user's camera fx 1000, fy 4000, principal point (320, 240); box centre (300, 200), side 200; crop camera
    s 0.5, tx 0.1, ty -0.2 (cam_crop_to_pinhole's docstring formulas, by hand): b s = 100; tz = 2 sqrt(fx fy) / 100
    = 40; t_x = 40 (300 - 320 + 50 * 0.1) / 1000 = -0.6; t_y = 40 (200 - 240 + 50 * -0.2) / 4000 = -0.5. A second
    row, s 2, tx -0.3, ty 0.4, box centre (10, 20), side 50: b s = 100 again; t_x = 40 (10 - 320 - 15) / 1000 =
    -13; t_y = 40 (20 - 240 + 20) / 4000 = -2."""
    t = cam_crop_to_pinhole(np.array([[0.5, 0.1, -0.2], [2.0, -0.3, 0.4]]), np.array([[300.0, 200.0], [10.0, 20.0]]),
                            np.array([200.0, 50.0]), 1000.0, 4000.0, 320.0, 240.0)
    np.testing.assert_allclose(t, [[-0.6, -0.5, 40.0], [-13.0, -2.0, 40.0]], rtol=1e-9)
    zero = cam_crop_to_pinhole(np.zeros((1, 3)), np.array([[320.0, 240.0]]), np.array([200.0]), 1000.0, 4000.0,
                               320.0, 240.0)
    np.testing.assert_allclose(zero, [[0.0, 0.0, 2 * 2000.0 / 1e-9]], rtol=1e-9)  # finite, as the original's
