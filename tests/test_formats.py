"""The user's camera, and the formats the field reads: .pose (pose-format), OpenPose JSON, OBJ meshes, MANO in NPZ."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils.generic import correct_wrists, normalize_hands_3d

from hamer.cli import main
from hamer.formats import UnitInfo, open_writers, parse_formats
from hamer.formats.pose import HAND_POINTS
from hamer.hamer_module import HAMER
from hamer.outputs import Frame, rotations_to_axis_angle
from hamer.results import Camera, FieldOfView, FrameResult

from conftest import SHARED_IMAGES, TWO_BOXES, smooth_noise_image

BOXES = TWO_BOXES
IMAGE = smooth_noise_image()


@pytest.fixture(scope="module")
def default_result(data_dir) -> FrameResult:
    return HAMER(data_dir=data_dir).predict(IMAGE, BOXES)


# ---------------------------------------------------------------------------------------------------- camera

def test_the_default_camera_given_explicitly_changes_nothing(data_dir, default_result):
    explicit = HAMER(data_dir=data_dir, camera=Camera(6250.0, 6250.0, 160.0, 120.0))  # 5000 / 256 * 320
    result = explicit.predict(IMAGE, BOXES)
    for a, b in zip(default_result.hands, result.hands, strict=True):
        for key in ("keypoints_3d", "keypoints_2d", "cam_t", "vertices"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


@pytest.mark.parametrize("camera", [Camera(12500.0, 12500.0, 160.0, 120.0), Camera(900.0, 1000.0, 150.0, 100.0),
                                    Camera(300.0, 300.0, 10.0, 230.0)])
def test_another_camera_moves_the_hand_not_its_2d_joints(data_dir, default_result, camera):
    result = HAMER(data_dir=data_dir, camera=camera).predict(IMAGE, BOXES)
    assert result.camera == camera
    for base, hand in zip(default_result.hands, result.hands, strict=True):
        np.testing.assert_array_equal(hand.keypoints_2d, base.keypoints_2d)  # the invariant
        np.testing.assert_array_equal(hand.keypoints_3d, base.keypoints_3d)
        # the translation, from the crop's weak-perspective camera, written out independently (float64)
        s, tx, ty = base.raw.pred_cam.astype(np.float64)
        tx = tx if hand.label == "Right" else -tx
        bs = base.box_size * s
        tz = 2 * math.sqrt(camera.fx * camera.fy) / bs
        expected = [tz * (base.box_center[0] - camera.cx + bs * tx / 2) / camera.fx,
                    tz * (base.box_center[1] - camera.cy + bs * ty / 2) / camera.fy, tz]
        np.testing.assert_allclose(hand.cam_t, expected, rtol=1e-5)
        # the hand's origin lands on the crop camera's pixel for it, whatever the camera (fx != fy included)
        origin = base.box_center + bs / 2 * np.array([tx, ty])
        np.testing.assert_allclose(camera.project(hand.cam_t), origin, atol=1e-3)
        # ... which puts the hand where HaMeR sees it: its projection with this camera gives the 2D joints, up to
        # the perspective difference between the cameras (measured: 2.2% of the crop side for the 56-degree camera
        # with its principal point at the image's edge, 0.3% for the others)
        reprojected = camera.project(hand.keypoints_3d + hand.cam_t)
        assert np.abs(reprojected - hand.keypoints_2d).max() < 0.03 * base.box_size


def test_translation_depth_scales_with_the_focal_length(data_dir, default_result):
    doubled = HAMER(data_dir=data_dir, camera=Camera(12500.0, 12500.0, 160.0, 120.0)).predict(IMAGE, BOXES)
    for base, hand in zip(default_result.hands, doubled.hands, strict=True):
        np.testing.assert_allclose(hand.cam_t[2], 2 * base.cam_t[2], rtol=1e-5)
        np.testing.assert_allclose(hand.cam_t[:2], base.cam_t[:2], rtol=1e-4, atol=1e-5)


def test_field_of_view_camera():
    camera = FieldOfView(90.0)((640, 480))
    np.testing.assert_allclose(camera.as_list(), [320.0, 320.0, 320.0, 240.0])  # f = (W / 2) / tan(45 deg)
    with pytest.raises(ValueError, match="field of view"):
        FieldOfView(180.0)
    with pytest.raises(ValueError, match="fx, fy > 0"):
        Camera(0.0, 1.0, 0.0, 0.0)


def test_camera_flags_are_checked(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), IMAGE)
    for flags in (["--intrinsics", "1,2,3"], ["--intrinsics", "-5,5,1,1"], ["--fov-deg", "0"],
                  ["--fov-deg", "60", "--intrinsics", "1,1,1,1"], ["--formats", "jsonl,pdf"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(tmp_path / "a.png"), *flags])
        assert exit_info.value.code == 2
        assert flags[0] in capsys.readouterr().err or "--intrinsics" in flags


# ---------------------------------------------------------------------------------------------------- writers

def frames_of(result: FrameResult) -> list[Frame]:
    """Three frames: both hands, none, the left alone."""
    left_only = FrameResult((result["Left"],), result.image_size, result.camera)
    empty = FrameResult((), result.image_size, result.camera)
    return [Frame("clip.mp4", 0, 0.0, result), Frame("clip.mp4", 1, 0.04, empty),
            Frame("clip.mp4", 2, 0.08, left_only)]


def write_all(tmp_path, frames, faces=None, pose_base=None, formats="jsonl,npz,pose,openpose,obj"):
    info = UnitInfo(tmp_path, "clip", 25.0, faces, pose_base, vertices=True)
    with open_writers(parse_formats(formats), info) as writers:
        for frame in frames:
            writers.add(frame)
    return writers


def test_pose_file_reads_back_and_pose_formats_hand_tools_run(tmp_path, default_result, data_dir):
    frames = frames_of(default_result)
    write_all(tmp_path, frames, faces=HAMER(data_dir=data_dir).reconstructor.faces)
    pose = Pose.read((tmp_path / "clip.pose").read_bytes())
    assert [c.name for c in pose.header.components] == ["LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS"]
    assert pose.header.components[0].points[:5] == ["WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP"]
    assert pose.header.components[1].points[-1] == "PINKY_TIP" and pose.header.components[0].format == "XYZC"
    assert (pose.header.dimensions.width, pose.header.dimensions.height) == (320, 240) and pose.body.fps == 25.0
    assert pose.body.data.shape == (3, 1, 42, 3)
    with np.load(tmp_path / "clip.npz") as npz:
        np.testing.assert_allclose(pose.body.data[0, 0, 21:, :2], npz["keypoints_2d"][0, 0], atol=1e-4)  # right
        np.testing.assert_allclose(pose.body.data[2, 0, :21, :2], npz["keypoints_2d"][2, 1], atol=1e-4)  # left
        z = pose.body.data[0, 0, 21:, 2]
        depth = npz["keypoints_3d"][0, 0, :, 2]
    assert z[0] == 0 and np.all(np.sign(z[1:]) == np.sign(depth[1:] - depth[0]))  # depth relative to the wrist
    assert pose.body.data.mask[1].all() and pose.body.data.mask[2, 0, 21:].all()  # absent hands are masked
    assert not pose.body.data.mask[2, 0, :21].any()
    normalize_hands_3d(pose)  # pose-format's own 3D hand normalization runs on it
    assert np.isfinite(pose.body.data[0, 0, 42:].filled(0)).all()


HOLISTIC_BODY = ["NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
                 "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
                 "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY",
                 "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP",
                 "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL",
                 "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX"]


def holistic_pose(frames: int) -> Pose:
    """A small MediaPipe-Holistic-shaped .pose: body, a few face points, both hands, world body."""
    def component(name, points):
        return PoseHeaderComponent(name=name, points=points, limbs=[(0, 1)], colors=[(255, 0, 0)],
                                   point_format="XYZC")

    components = [component("POSE_LANDMARKS", HOLISTIC_BODY), component("FACE_LANDMARKS", [str(i) for i in range(5)]),
                  component("LEFT_HAND_LANDMARKS", list(HAND_POINTS)),
                  component("RIGHT_HAND_LANDMARKS", list(HAND_POINTS)),
                  component("POSE_WORLD_LANDMARKS", HOLISTIC_BODY)]
    points = sum(len(c.points) for c in components)
    rng = np.random.default_rng(5)
    data = rng.uniform(0, 300, size=(frames, 1, points, 3)).astype(np.float32)
    confidence = rng.uniform(0.2, 1, size=(frames, 1, points)).astype(np.float32)
    confidence[1, 0, 40:50] = 0  # a few points missing
    data[1, 0, 40:50] = 0
    header = PoseHeader(0.2, PoseHeaderDimensions(320, 240, 0), components)
    return Pose(header, NumPyPoseBody(25.0, np.ma.masked_array(data, mask=np.repeat((confidence == 0)[..., None], 3,
                                                                                     axis=-1)), confidence))


def test_pose_base_keeps_every_other_component_and_replaces_the_hands(tmp_path, default_result):
    base_path = tmp_path / "base.pose"
    with open(base_path, "wb") as f:
        holistic_pose(3).write(f)
    write_all(tmp_path, frames_of(default_result), pose_base=base_path, formats="pose")
    base, upgraded = Pose.read(base_path.read_bytes()), Pose.read((tmp_path / "clip.pose").read_bytes())
    assert [c.name for c in upgraded.header.components] == [c.name for c in base.header.components]
    hands = slice(33 + 5, 33 + 5 + 42)
    keep = np.r_[0:hands.start, hands.stop:base.body.data.shape[2]]
    assert upgraded.body.data.data[:, :, keep].tobytes() == base.body.data.data[:, :, keep].tobytes()
    assert upgraded.body.confidence[:, :, keep].tobytes() == base.body.confidence[:, :, keep].tobytes()
    left, right = hands.start, hands.start + 21
    np.testing.assert_allclose(upgraded.body.data[0, 0, right:right + 21, :2], default_result["Right"].keypoints_2d,
                               atol=1e-4)
    assert upgraded.body.confidence[1, 0, hands].max() == 0  # a frame without hands: both hands masked
    assert upgraded.body.confidence[2, 0, left:left + 21].min() > 0
    correct_wrists(upgraded)
    normalize_hands_3d(upgraded)


def test_pose_base_that_does_not_fit_is_named(tmp_path, default_result):
    base_path = tmp_path / "base.pose"
    with open(base_path, "wb") as f:
        holistic_pose(5).write(f)
    with pytest.raises(ValueError, match=r"--pose-base .*base.pose: it has 5 frames, the video 3"):
        write_all(tmp_path, frames_of(default_result), pose_base=base_path, formats="pose")
    assert not (tmp_path / "clip.pose").exists()


def test_openpose_json_reads_back(tmp_path, default_result):
    write_all(tmp_path, frames_of(default_result), formats="openpose")
    files = sorted(p.name for p in (tmp_path / "clip.openpose").iterdir())
    assert files == [f"clip_{i:012d}_keypoints.json" for i in range(3)]
    first = json.loads((tmp_path / "clip.openpose" / files[0]).read_text())
    (person,) = first["people"]
    right = np.array(person["hand_right_keypoints_2d"]).reshape(21, 3)
    np.testing.assert_allclose(right[:, :2], default_result["Right"].keypoints_2d, atol=1e-5)
    assert (right[:, 2] == 1.0).all()  # a user's box: confidence 1
    right_3d = np.array(person["hand_right_keypoints_3d"]).reshape(21, 4)
    hand = default_result["Right"]
    np.testing.assert_allclose(right_3d[:, :3], hand.keypoints_3d + hand.cam_t, rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "clip.openpose" / files[1]).read_text())["people"] == []
    (left_only,) = json.loads((tmp_path / "clip.openpose" / files[2]).read_text())["people"]
    assert left_only["hand_right_keypoints_2d"] == [0.0] * 63 and len(left_only["hand_left_keypoints_3d"]) == 84


def test_obj_meshes_read_back(tmp_path, default_result, data_dir):
    faces = HAMER(data_dir=data_dir).reconstructor.faces
    write_all(tmp_path, frames_of(default_result), faces=faces, formats="obj")
    files = sorted(p.name for p in (tmp_path / "clip.obj").iterdir())
    assert files == ["frame_000000_Left.obj", "frame_000000_Right.obj", "frame_000002_Left.obj"]
    right = (tmp_path / "clip.obj" / "frame_000000_Right.obj").read_text().splitlines()
    vertices = np.array([[float(v) for v in line.split()[1:]] for line in right if line.startswith("v ")])
    triangles = np.array([[int(v) for v in line.split()[1:]] for line in right if line.startswith("f ")])
    assert vertices.shape == (778, 3) and triangles.shape == (1538, 3)
    hand = default_result["Right"]
    np.testing.assert_allclose(vertices, hand.vertices + hand.cam_t, atol=1e-5)
    np.testing.assert_array_equal(triangles, faces + 1)
    left = (tmp_path / "clip.obj" / "frame_000000_Left.obj").read_text().splitlines()
    left_triangles = np.array([[int(v) for v in line.split()[1:]] for line in left if line.startswith("f ")])
    np.testing.assert_array_equal(left_triangles, faces[:, ::-1] + 1)  # mirrored: winding reversed


def test_npz_carries_mano_parameters_camera_and_vertices(tmp_path, default_result):
    write_all(tmp_path, frames_of(default_result), formats="npz")
    hand = default_result["Left"]
    with np.load(tmp_path / "clip.npz") as npz:
        np.testing.assert_array_equal(npz["hand_pose"][0, 1], hand.mano.hand_pose)
        np.testing.assert_array_equal(npz["betas"][0, 1], hand.mano.betas)
        np.testing.assert_array_equal(npz["vertices"][0, 1], hand.vertices)
        assert npz["camera"][0].tolist() == default_result.camera.as_list()
        for rotation, axis_angle in zip(npz["hand_pose"][0, 1], npz["hand_pose_aa"][0, 1], strict=True):
            rebuilt, _ = cv2.Rodrigues(axis_angle.astype(np.float64))
            np.testing.assert_allclose(rebuilt, rotation, atol=1e-5)
        assert np.isnan(npz["hand_pose"][2, 0]).all()  # no right hand in frame 2


def test_the_left_hand_conversion_drives_a_left_mano_model_to_the_reported_hand():
    """The network's mirrored parameters, converted with R_left = M R M, drive a left MANO model (built as the
    mirror of the right one) to the un-mirrored joints and vertices HaMeR reports (x negated)."""
    import torch

    from hamer.models.mano import MANO

    from synthetic import mano_arrays, mano_from_arrays

    arrays = mano_from_arrays(mano_arrays(0))
    m = np.array([-1.0, 1.0, 1.0])
    mirrored = dict(arrays, v_template=arrays["v_template"] * m, shapedirs=arrays["shapedirs"] * m[None, :, None])
    # pose features are (R - I) per joint, flattened (i, j): M R M flips the entries with m_i m_j = -1
    mirrored["posedirs"] = arrays["posedirs"] * m[None, :, None] * np.tile(np.outer(m, m).reshape(9), 15)
    right, left = MANO(arrays), MANO(mirrored)
    rng = np.random.default_rng(3)
    rot = np.stack([cv2.Rodrigues(a)[0] for a in rng.normal(0, 0.4, (16, 3))])
    converted = np.diag(m) @ rot @ np.diag(m)
    betas = torch.from_numpy(rng.normal(0, 1, (1, 10)).astype(np.float32))
    as_t = lambda r: torch.from_numpy(r.astype(np.float32))[None]  # noqa: E731
    with torch.no_grad():
        net = right(global_orient=as_t(rot[:1]), hand_pose=as_t(rot[1:]), betas=betas)
        ours = left(global_orient=as_t(converted[:1]), hand_pose=as_t(converted[1:]), betas=betas)
    np.testing.assert_allclose(ours.joints[0].numpy(), net.joints[0].numpy() * m, atol=1e-5)
    np.testing.assert_allclose(ours.vertices[0].numpy(), net.vertices[0].numpy() * m, atol=1e-5)


def test_the_left_hand_conversion_given_in_the_readme():
    """Mirrored (right-hand) rotations R -> left-hand MANO: M R M with M = diag(-1, 1, 1), which is the axis-angle
    (x, y, z) -> (x, -y, -z)."""
    rng = np.random.default_rng(2)
    mirror = np.diag([-1.0, 1.0, 1.0])
    for _ in range(10):
        axis_angle = rng.normal(size=3) * 0.8
        rotation, _ = cv2.Rodrigues(axis_angle)
        np.testing.assert_allclose(rotations_to_axis_angle(mirror @ rotation @ mirror),
                                   axis_angle * [1, -1, -1], atol=1e-5)


def test_every_format_for_frames_without_hands(tmp_path, data_dir):
    empty = FrameResult((), (320, 240), Camera(1.0, 1.0, 0.0, 0.0))
    write_all(tmp_path, [Frame("a.png", 0, None, empty)], faces=HAMER(data_dir=data_dir).reconstructor.faces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.jsonl", "clip.npz", "clip.obj", "clip.openpose",
                                                         "clip.pose"]
    assert Pose.read((tmp_path / "clip.pose").read_bytes()).body.data.mask.all()
    assert list((tmp_path / "clip.obj").iterdir()) == []


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="../shared/images is absent")
def test_run_writes_every_format_with_the_users_camera(tmp_path, data_dir, capsys):
    video = tmp_path / "pan.avi"
    img = cv2.imread(str(SHARED_IMAGES / "test5.jpeg"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (img.shape[1], img.shape[0]))
    for i in range(3):
        writer.write(np.roll(img, 4 * i, axis=1))
    writer.release()
    out = tmp_path / "out"
    assert main(["run", str(video), "--data", str(data_dir), "--out", str(out), "--quiet", "--vertices",
                 "--formats", "jsonl,npz,pose,openpose,obj", "--intrinsics", "900,910,330,250"]) == 0
    with np.load(out / "pan.npz") as npz:
        assert npz["camera"].tolist() == [[900.0, 910.0, 330.0, 250.0]] * 3 and npz["present"].any()
        assert npz["vertices"].shape == (3, 2, 778, 3)
    assert json.loads((out / "pan.jsonl").read_text().splitlines()[0])["camera"] == [900.0, 910.0, 330.0, 250.0]
    assert Pose.read((out / "pan.pose").read_bytes()).body.data.shape[0] == 3
    assert len(list((out / "pan.openpose").iterdir())) == 3 and any((out / "pan.obj").iterdir())
