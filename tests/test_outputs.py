"""The writers (outputs.py) and the drawing (overlay.py) on hand-made typed results."""

from __future__ import annotations

import json
import os
import re
import stat

import cv2
import numpy as np
import pytest

from hamer.files import give_default_permissions
from hamer.outputs import (
    NPZ_ARRAYS,
    Frame,
    FrameWriter,
    frame_json,
    npz_arrays,
    rotations_to_axis_angle,
    write_image,
)
from hamer.overlay import FINGER_COLORS, LABEL_COLORS, draw_hands
from hamer.results import Camera, FrameResult, Hand, ManoParams, frozen_array
from hamer.video import VIDEO_CODECS, VideoFileWriter, browser_codec

SIZE = (200, 100)  # W, H
CAMERA = Camera(800.0, 800.0, 100.0, 50.0)


def has_color(pixels: np.ndarray, color: tuple[int, int, int], tol: int = 30) -> bool:
    """Whether any pixel is within ``tol`` of ``color`` (lines are anti-aliased)."""
    return bool((np.abs(pixels.reshape(-1, 3).astype(int) - color).max(axis=1) <= tol).any())


def left_hand(track_id: int = 3) -> Hand:
    joints = np.zeros((21, 3), np.float32)
    joints[:, 0] = np.linspace(-0.05, 0.05, 21)
    joints_2d = np.stack([np.linspace(120, 180, 21), np.full(21, 50.0)], axis=1)
    return Hand(label="Left", box=frozen_array([110, 20, 190, 80]), score=0.75, detector="pose",
                detected_label="Right", track_id=track_id, keypoints_3d=frozen_array(joints),
                keypoints_2d=frozen_array(joints_2d), cam_t=frozen_array([0.1, -0.2, 3.0]))


def frame(hands: tuple[Hand, ...], camera: Camera | None = CAMERA) -> Frame:
    return Frame("clip.mp4", 7, 7 / 30, FrameResult(hands, SIZE, camera))


def test_a_left_hand_alone_goes_to_the_left_slot():
    arrays = npz_arrays([frame(()), frame((left_hand(),))])
    assert arrays["labels"].tolist() == ["Right", "Left"]
    assert arrays["present"].tolist() == [[False, False], [False, True]]
    assert arrays["num_hands"].tolist() == [0, 1] and arrays["camera"].tolist()[1] == [800.0, 800.0, 100.0, 50.0]
    assert np.isnan(arrays["hand_pose"]).all() and "vertices" not in arrays  # no MANO parameters in this hand
    assert arrays["track_id"].tolist() == [[-1, -1], [-1, 3]]
    np.testing.assert_array_equal(arrays["box"][1, 1], [110, 20, 190, 80])
    assert np.isnan(arrays["box"][1, 0]).all() and np.isnan(arrays["keypoints_3d"][:, 0]).all()
    np.testing.assert_array_equal(arrays["keypoints_3d"][1, 1, :, 0], np.linspace(-0.05, 0.05, 21, dtype=np.float32))
    np.testing.assert_array_equal(arrays["cam_t"][1, 1], np.float32([0.1, -0.2, 3.0]))
    assert arrays["score"][1, 1] == np.float32(0.75) and arrays["focal_length"].tolist() == [800.0, 800.0]
    assert arrays["image_size"].tolist() == [[200, 100], [200, 100]] and arrays["image_size"].dtype == np.int32
    assert arrays["source"].tolist() == ["clip.mp4", "clip.mp4"] and arrays["frame"].tolist() == [7, 7]
    np.testing.assert_array_equal(arrays["time_s"], [7 / 30, 7 / 30])
    image = npz_arrays([Frame("a.png", 3, None, FrameResult((), SIZE, None))])
    assert np.isnan(image["time_s"]).all() and np.isnan(image["camera"]).all() and np.isnan(image["focal_length"]).all()
    assert {k: v.dtype for k, v in arrays.items() if k in ("box", "keypoints_3d", "cam_t", "score", "betas")} == {
        k: np.dtype(np.float32) for k in ("box", "keypoints_3d", "cam_t", "score", "betas")}


def test_jsonl_record_of_a_frame():
    record = frame_json(frame((left_hand(),)))
    assert json.loads(json.dumps(record)) == record  # plain JSON: no NaN, no numpy types
    assert (record["source"], record["frame"], record["time_s"]) == ("clip.mp4", 7, round(7 / 30, 6))
    assert record["image_size"] == [200, 100] and record["focal_length"] == 800.0
    (hand,) = record["hands"]
    assert (hand["label"], hand["detected_label"], hand["detector"], hand["track_id"]) == ("Left", "Right", "pose", 3)
    assert hand["box"] == [110, 20, 190, 80] and hand["cam_t"] == [0.1, -0.2, 3.0]
    assert hand["keypoints_3d"][20] == [0.05, 0.0, 0.0] and hand["keypoints_2d"][0] == [120.0, 50.0]
    user = frame((Hand(label="Right", box=frozen_array([1, 2, 3, 4])),), camera=None)
    record = frame_json(user)
    assert record["hands"][0]["score"] is None and record["hands"][0]["keypoints_3d"] is None
    assert record["focal_length"] is None and record["hands"][0]["track_id"] is None


def test_frame_writer_writes_both_files_or_neither(tmp_path):
    jsonl, npz = tmp_path / "a.jsonl", tmp_path / "a.npz"
    with FrameWriter(jsonl, npz) as writer:
        writer.add(frame((left_hand(),)))
        writer.add(frame(()))
    assert [len(json.loads(line)["hands"]) for line in jsonl.read_text().splitlines()] == [1, 0]
    with np.load(npz) as arrays:
        assert arrays["present"].tolist() == [[False, True], [False, False]]
    with FrameWriter(None, tmp_path / "none.npz") as writer:
        pass
    with np.load(tmp_path / "none.npz") as arrays:
        assert arrays["keypoints_3d"].shape == (0, 2, 21, 3) and arrays["source"].shape == (0,)
    (tmp_path / "none.npz").unlink()
    with pytest.raises(RuntimeError), FrameWriter(tmp_path / "b.jsonl", tmp_path / "b.npz") as writer:
        writer.add(frame(()))
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.npz"]


def test_overlay_draws_box_label_and_skeleton_on_a_copy():
    img = np.zeros((100, 200, 3), np.uint8)
    out = draw_hands(img, [left_hand()])
    assert not img.any()  # the input is untouched
    assert has_color(out[79:82, 150], LABEL_COLORS["Left"])  # bottom edge of the box
    assert has_color(out[30, 189:192], LABEL_COLORS["Left"])  # right edge
    assert not has_color(out[90:, :], LABEL_COLORS["Left"])  # nothing below the box
    # the bones: joints 0..20 lie on y = 50 from x = 120 to 180; the thumb (joints 1-4) is red, the pinky magenta
    assert has_color(out[49:52, 125:133], FINGER_COLORS[0])
    assert not has_color(out[49:52, 125:133], FINGER_COLORS[4])
    assert has_color(out[49:52, 172:178], FINGER_COLORS[4])
    assert out[:18].any()  # the caption band sits above the box (y1 = 20)


def test_overlay_of_detected_only_hands_and_bad_joints():
    img = np.full((100, 200, 3), 255, np.uint8)
    hand = Hand(label="Right", box=frozen_array([10, 10, 60, 60]), score=0.9, detector="hand")
    out = draw_hands(img, [hand])
    assert has_color(out[59:62, 30], LABEL_COLORS["Right"])
    assert not any(has_color(out, c) for c in FINGER_COLORS)  # no joints: no skeleton
    bad = left_hand().replace(keypoints_2d=np.full((21, 2), np.nan))
    draw_hands(img, [bad])  # non-finite joints are skipped, not drawn at (0, 0) nor raising


def test_jsonl_floats_are_rounded_to_six_decimals_and_lines_are_compact(tmp_path):
    hand = left_hand().replace(score=0.123456789, cam_t=np.float32([0.25, -0.5, 2.0]))
    record = frame_json(frame((hand,), camera=Camera(800.1234567, 800.7654321, 100.0000004, 50.5)))
    assert record["focal_length"] == 800.123457 and record["camera"] == [800.123457, 800.765432, 100.0, 50.5]
    assert record["hands"][0]["score"] == pytest.approx(0.123457, abs=1e-12)  # float32 0.12345679 rounded
    assert frame_json(frame((left_hand(),)))["hands"][0]["score"] == 0.75
    assert frame_json(frame((left_hand().replace(box=frozen_array([0.1234567, 2, 3, 4])),)))["hands"][0]["box"][0] \
        == 0.123457
    with FrameWriter(tmp_path / "a.jsonl", None) as writer:
        writer.add(frame((left_hand(),)))
    (line,) = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert line.startswith('{"source":"clip.mp4","frame":7,"time_s":0.233333,"image_size":[200,100],')
    assert ", " not in line and '": ' not in line


def test_empty_npz_has_every_array_with_its_dtype(tmp_path):
    with FrameWriter(None, tmp_path / "empty.npz", vertices=True):
        pass
    with np.load(tmp_path / "empty.npz") as arrays:
        assert set(arrays.files) == set(NPZ_ARRAYS)  # vertices too, as asked
        shapes = {k: arrays[k].shape for k in arrays.files}
        dtypes = {k: arrays[k].dtype for k in arrays.files}
    assert shapes["vertices"] == (0, 2, 778, 3) and shapes["hand_pose"] == (0, 2, 15, 3, 3)
    assert shapes["image_size"] == (0, 2) and shapes["labels"] == (2,)
    assert (dtypes["present"], dtypes["track_id"], dtypes["num_hands"], dtypes["frame"], dtypes["image_size"],
            dtypes["time_s"], dtypes["vertices"], dtypes["box"]) == (
        np.bool_, np.int32, np.int8, np.int64, np.int32, np.float64, np.float32, np.float32)
    assert dtypes["source"].kind == "U"


def test_vertices_are_written_only_when_asked(tmp_path):
    verts = np.linspace(0, 1, 778 * 3, dtype=np.float32).reshape(778, 3)
    hand = left_hand().replace(vertices=verts)
    arrays = npz_arrays([frame((hand,)), frame(())], vertices=True)
    assert arrays["vertices"].shape == (2, 2, 778, 3)
    np.testing.assert_array_equal(arrays["vertices"][0, 1], verts)
    assert np.isnan(arrays["vertices"][0, 0]).all() and np.isnan(arrays["vertices"][1]).all()
    assert "vertices" not in npz_arrays([frame((hand,))])
    with FrameWriter(None, tmp_path / "a.npz") as writer:  # default: no vertices
        writer.add(frame((hand,)))
    with np.load(tmp_path / "a.npz") as arrays:
        assert "vertices" not in arrays.files and arrays["present"].tolist() == [[False, True]]


def test_frame_writer_counts_frames_and_hands(tmp_path):
    writer = FrameWriter(tmp_path / "a.jsonl", None)
    assert (writer.frames, writer.hands, writer.npz_path) == (0, 0, None)
    with writer:
        for hands in ((left_hand(),), (), (left_hand(), left_hand().replace(label="Right"))):
            writer.add(frame(hands))
    assert (writer.frames, writer.hands) == (3, 3)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3 and not (tmp_path / "a.npz").exists()


def test_new_files_get_the_umask_permissions(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        give_default_permissions(path)
        assert os.umask(0o022) == 0o022  # the umask is left as it was
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0o666 less 0o022


def test_axis_angle_of_known_rotations():
    quarter_z = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)  # +90 degrees about z
    half_x = np.diag(np.float32([1, -1, -1]))  # 180 degrees about x
    out = rotations_to_axis_angle(np.stack([np.stack([quarter_z, half_x, np.eye(3, dtype=np.float32)])] * 2))
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], [[0, 0, np.pi / 2], [np.pi, 0, 0], [0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("codec", ["h264", "vp9", "mp4v"])
def test_unencodable_image_and_unwritable_video_are_named(tmp_path, codec):
    with pytest.raises(OSError, match=r"^cannot encode an image as \.jpg$"):
        write_image(tmp_path / "tall.jpg", np.zeros((70000, 1, 3), np.uint8))  # JPEG sides stop at 65,500 px
    missing = tmp_path / "no_such_folder" / f"clip{VIDEO_CODECS[codec]}"
    with pytest.raises(OSError, match=rf"^cannot write an? \S+ video \({re.escape(str(missing))}\): "), \
            VideoFileWriter(missing, 10.0, codec) as video:
        video.write(np.zeros((32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def _fail_inside() -> None:
    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")  # needs its arguments to be made


@pytest.mark.parametrize("make", [
    lambda p: FrameWriter(p / "a.jsonl", p / "a.npz"),
    lambda p: FrameWriter(p / "a.jsonl", None),
    lambda p: VideoFileWriter(p / "a.mp4", 10.0),
])
def test_an_error_inside_a_writer_comes_out_unchanged_and_leaves_no_file(tmp_path, make):
    """The error the block raised, with its traceback (not one the clean-up made); no output, no temporary file."""
    with pytest.raises(UnicodeDecodeError) as info, make(tmp_path) as writer:
        if isinstance(writer, VideoFileWriter):
            writer.write(np.zeros((32, 32, 3), np.uint8))
        else:
            writer.add(frame((left_hand(),)))
        _fail_inside()
    assert info.traceback[-1].name == "_fail_inside"
    assert list(tmp_path.iterdir()) == []


def test_npz_dtypes_and_mano_parameters_as_documented():
    """Every array's dtype as NPZ_ARRAYS states it (written out here), and a hand's MANO parameters in its slot:
    rotations as matrices and as axis-angle (a quarter turn about z is (0, 0, pi/2))."""
    quarter_z = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    mano = ManoParams(frozen_array(quarter_z[None]), frozen_array(np.tile(quarter_z, (15, 1, 1))),
                      frozen_array(np.arange(10) / 10))
    hand = left_hand().replace(mano=mano, vertices=np.zeros((778, 3), np.float32))
    arrays = npz_arrays([frame((hand,)), Frame("b.png", 0, None, FrameResult((), SIZE, None))], vertices=True)
    documented = {"labels": "U", "source": "U", "frame": np.int64, "time_s": np.float64, "image_size": np.int32,
                  "num_hands": np.int8, "present": np.bool_, "track_id": np.int32}
    for key, value in arrays.items():
        expected = documented.get(key, np.float32)
        assert (value.dtype.kind == expected) if isinstance(expected, str) else value.dtype == expected, key
    assert set(arrays) == set(NPZ_ARRAYS)
    np.testing.assert_array_equal(arrays["global_orient"][0, 1], quarter_z)
    np.testing.assert_array_equal(arrays["hand_pose"][0, 1, 14], quarter_z)
    np.testing.assert_allclose(arrays["global_orient_aa"][0, 1], [0, 0, np.pi / 2], atol=1e-6)
    np.testing.assert_allclose(arrays["hand_pose_aa"][0, 1], np.tile([0, 0, np.pi / 2], (15, 1)), atol=1e-6)
    np.testing.assert_allclose(arrays["betas"][0, 1], np.arange(10) / 10, rtol=1e-6)
    for key in ("global_orient", "hand_pose", "global_orient_aa", "hand_pose_aa", "betas"):
        assert np.isnan(arrays[key][0, 0]).all() and np.isnan(arrays[key][1]).all()  # absent hands
    assert np.isnan(arrays["camera"][1]).all()


@pytest.mark.parametrize("codec", ["h264", "vp9", "mp4v"])
def test_the_codec_written_is_read_back(tmp_path, codec):
    """Each codec's file, decoded by PyAV (FFmpeg): its codec, frame count, size (odd sides padded to even) and
    pictures; OpenCV reads the same codec."""
    av = pytest.importorskip("av")
    path = tmp_path / f"clip{VIDEO_CODECS[codec]}"
    colors = [(40 * i, 255 - 40 * i, 128) for i in range(5)]
    with VideoFileWriter(path, 12.5, codec) as video:
        for color in colors:
            video.write(np.full((45, 61, 3), color, np.uint8))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == {"h264": "h264", "vp9": "vp9", "mp4v": "mpeg4"}[codec]
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        assert float(stream.average_rate) == pytest.approx(12.5)
    assert len(frames) == 5
    assert frames[0].shape == (46, 62, 3)
    if codec == "h264":  # browsers: 4:2:0, and the index (moov) first so that playback starts before the download ends
        data = path.read_bytes()
        assert stream.codec_context.pix_fmt == "yuv420p" and 0 < data.find(b"moov") < data.find(b"mdat")
    for frame, color in zip(frames, colors, strict=True):
        np.testing.assert_allclose(frame[5:40, 5:55].reshape(-1, 3).mean(axis=0), color, atol=8)
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
    cap.release()
    assert fourcc in {"h264": ("avc1", "h264"), "vp9": ("vp90", "vp09"), "mp4v": ("mp4v", "fmp4")}[codec]


def test_the_default_codec_plays_in_browsers():
    av = pytest.importorskip("av")
    try:
        av.codec.Codec("libx264", "w")
        expected = "h264"
    except Exception:  # noqa: BLE001 - PyAV without libx264
        expected = "vp9"
    assert browser_codec() == expected
