"""Unit tests of the units of a corpus run and their options (hamer.units): a unit's file names, the fingerprint of
the options that change outputs, the flags that differ, an input's stat, and a unit's manifest record. Expected
values are written out."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hamer.boxfile import BoxFileDetectors
from hamer.model_options import ModelOptions
from hamer.results import Camera, FieldOfView
from hamer.units import Options, Unit, differences, fingerprint, input_stat, record


def scene_camera(image_size):  # a camera given as a function of the image size
    return Camera(500.0, 500.0, image_size[0] / 2, image_size[1] / 2)


class CameraObject:
    def __call__(self, image_size):
        return scene_camera(image_size)


def test_a_units_files_in_format_order_and_its_overlay_by_kind():
    assert Unit("a.png", "image", name="a").files(["npz", "jsonl"], False) == ["a.npz", "a.jsonl"]
    assert Unit("a.png", "image", name="a").files(["jsonl"], True) == ["a.jsonl", "a.overlay.jpg"]
    assert Unit("d", "folder", name="d").files(["pose", "openpose"], True) == ["d.pose", "d.openpose", "d.overlay"]
    video = Unit("v.mp4", "video", name="v").files([], True)
    assert video in (["v.overlay.mp4"], ["v.overlay.webm"])


def test_the_fingerprint_of_bbox_only_options_written_out(tmp_path):
    base = tmp_path / "base.pose"
    options = Options(bbox_only=True, formats=("npz", "jsonl", "pose"), overlay=True, overlay_style="boxes",
                      side_view=True, smooth=True, min_cutoff=0.5, beta=3.0, label_hold=7, rescale_factor=2.5,
                      max_hands=1, backend="onnx", precision="fp16", vertices=True, pose_base=str(base),
                      camera=Camera(1.0, 2.0, 3.0, 4.0), engine="ray", batch_size=3, workers=4, detect_workers=5)
    assert fingerprint(options) == {
        "formats": ["jsonl", "npz", "pose"], "overlay": True, "bbox_only": True, "vertices": True,
        "camera": {"type": "Camera", "fx": 1.0, "fy": 2.0, "cx": 3.0, "cy": 4.0}, "smooth": True,
        "min_cutoff": 0.5, "beta": 3.0, "label_hold": 7, "rescale_factor": 2.5, "max_hands": 1, "backend": "onnx",
        "precision": "fp16", "model": None, "pose_base": str(base), "overlay_style": "boxes", "side_view": True,
        "detector": None}


def test_the_fingerprint_leaves_out_what_only_rounding_changes_and_what_is_not_written():
    plain = fingerprint(Options(bbox_only=True))
    assert plain["overlay_style"] is None and plain["side_view"] is False and plain["pose_base"] is None
    assert fingerprint(Options(bbox_only=True, overlay_style="boxes", side_view=True)) == plain  # no overlay
    assert fingerprint(Options(bbox_only=True, engine="ray", batch_size=1, workers=8, detect_workers=1,
                               device="cuda", ray_address="x:1")) == plain


def test_a_relative_pose_base_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fingerprint(Options(bbox_only=True, pose_base="b.pose"))["pose_base"] == str(tmp_path / "b.pose")


def test_the_model_is_its_resolved_checkpoint_and_its_onnx_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert fingerprint(Options(checkpoint="link/m.ckpt"))["model"] == str(tmp_path / "real" / "m.ckpt")
    assert fingerprint(Options(checkpoint="link/m.ckpt", onnx="x.onnx"))["model"] == \
        f"{tmp_path / 'real' / 'm.ckpt'} ({tmp_path / 'x.onnx'})"


def test_cameras_and_detectors_by_their_values_or_names(tmp_path):
    def camera_of(camera):
        return fingerprint(Options(bbox_only=True, camera=camera))["camera"]

    def detector_of(detector):
        return fingerprint(Options(bbox_only=True, detector=detector))["detector"]

    assert camera_of(FieldOfView(60.0)) == {"type": "FieldOfView", "fov_deg": 60.0}
    assert camera_of(scene_camera) == "scene_camera"
    assert camera_of(CameraObject()) == "CameraObject"  # an instance without __qualname__: its class's
    boxes = BoxFileDetectors(str(tmp_path / "boxes.json"))
    assert dataclasses.is_dataclass(boxes)
    assert detector_of(boxes) == repr(boxes) and str(tmp_path / "boxes.json") in repr(boxes)
    assert detector_of(scene_camera) == "scene_camera"
    assert detector_of(CameraObject()) == "CameraObject"


def test_differences_name_the_flags_in_fingerprint_order():
    now = fingerprint(Options(bbox_only=True))
    assert differences(None, now) == []  # a record written before fingerprints
    assert differences(dict(now), now) == []
    recorded = {**now, "smooth": True, "camera": {"type": "FieldOfView", "fov_deg": 1.0}, "model": "m"}
    assert differences(recorded, now) == ["--intrinsics/--fov-deg", "--smooth", "--data/--checkpoint/--onnx"]
    assert differences({**now, "detector": "x", "overlay_style": "mesh"}, now) == [
        "--overlay STYLE", "--boxes (Options.detector)"]
    assert differences(recorded, {**now, "new_key": 1}) == [
        "--intrinsics/--fov-deg", "--smooth", "--data/--checkpoint/--onnx", "new_key"]  # a key of a later version


def test_options_model_carries_the_models_own_options():
    options = Options(data="d", checkpoint="c", device="cuda:1", backend="torch", onnx="o", precision="bf16",
                      rescale_factor=3.0, camera=FieldOfView(50.0))
    assert options.model == ModelOptions(device="cuda:1", backend="torch", precision="bf16", data="d",
                                         checkpoint="c", onnx="o", rescale_factor=3.0, camera=FieldOfView(50.0))


def test_input_stat_of_a_file_a_folder_and_a_missing_input(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"12345")
    os.utime(a, ns=(1, 2_000_000_000))
    assert input_stat(Unit(str(a), "image")) == [5, 2_000_000_000]
    folder = tmp_path / "f"
    folder.mkdir()
    images = [folder / "1.png", folder / "2.png"]
    images[0].write_bytes(b"123")
    images[1].write_bytes(b"1234567")
    os.utime(images[0], ns=(1, 5_000_000_000))
    os.utime(images[1], ns=(1, 3_000_000_000))
    os.utime(folder, ns=(1, 4_000_000_000))
    unit = Unit(str(folder), "folder", images=[str(p) for p in images])
    assert input_stat(unit) == [10, 5_000_000_000]  # the folder's own size not counted
    os.utime(folder, ns=(1, 6_000_000_000))  # an image removed or added changes the folder's mtime
    assert input_stat(unit) == [10, 6_000_000_000]
    images[1].unlink()
    assert input_stat(unit) is None
    assert input_stat(Unit(str(tmp_path / "gone.png"), "image")) is None


def test_a_record_written_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    unit = Unit("a.mp4", "video", name="a", frames=12)
    line = record(unit, "truncated", 10, 3, 1.23456, "ended early", ("a.jsonl", "a.npz"), stat=[1, 2])
    assert line == {"input": str(Path(tmp_path) / "a.mp4"), "name": "a", "kind": "video", "status": "truncated",
                    "frames": 10, "expected_frames": 12, "hands": 3, "seconds": 1.235, "error": "ended early",
                    "files": ["a.jsonl", "a.npz"], "stat": [1, 2]}


def test_a_unit_is_shown_without_its_urls_credentials_and_query():
    url = Unit("s3://AKID:s3cret@bucket/in/a.mp4?X-Amz-Signature=abc", "video")
    assert url.shown == "s3://***@bucket/in/a.mp4?***"
    assert Unit("/data/in/a:b@c.mp4", "video").shown == "/data/in/a:b@c.mp4"  # a local path as it is
