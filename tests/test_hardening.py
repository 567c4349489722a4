"""Hardening: odd file names, huge boxes, bad data files, options checked where given, colour order, a quiet run."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hamer.cropping as cropping
from hamer.checkpoint import build_model, load_checkpoint, read_mean_params, save_safetensors
from hamer.cli import main
from hamer.configs import data_paths, load_config
from hamer.detection import DetectorOptions, HandDetector
from hamer.hamer_module import HAMER
from hamer.models.mano import load_mano_pickle
from hamer.overlay import draw_hands
from hamer.results import Hand, frozen_array

from conftest import SHARED_IMAGES

IMAGE = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2)


def hamer_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``hamer`` in a subprocess (a crash there cannot take pytest down)."""
    return subprocess.run([sys.executable, "-m", "hamer", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.fixture(scope="module")
def hamer_model(data_dir) -> HAMER:
    """Loaded here: a hypothesis example must not pay the load (and a first ONNX export) against its deadline."""
    hamer = HAMER(data_dir=data_dir)
    hamer.load()
    return hamer


# ---------------------------------------------------------------------------------------------------- file names

def test_a_file_name_that_is_not_utf8_is_processed_not_a_crash(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    ok, data = cv2.imencode(".jpg", IMAGE)
    Path(os.fsdecode(os.fsencode(folder) + b"/b\xff.jpg")).write_bytes(data.tobytes())
    Path(folder / "a.jpg").write_bytes(data.tobytes())
    run = hamer_cli("run", str(folder), "--bbox-only", "--quiet", "--out", str(tmp_path / "out"), "--overlay")
    assert run.returncode == 0, run.stderr  # today: -11 (segmentation fault in cv2.imread)
    lines = (tmp_path / "out" / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["source"].endswith("b\udcff.jpg")
    assert len(list((tmp_path / "out" / "frames.overlay").iterdir())) == 2


def test_a_video_whose_name_is_not_utf8(tmp_path):
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/clip\xff.avi"))
    with_name = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(3):
        with_name.write(IMAGE)
    with_name.release()
    os.rename(tmp_path / "clip.avi", path)
    run = hamer_cli("run", str(path), "--bbox-only", "--quiet", "--out", str(tmp_path / "out"), "--overlay")
    assert run.returncode == 0, run.stderr
    assert len(Path(os.fsdecode(os.fsencode(tmp_path) + b"/out/clip\xff.jsonl")).read_text().splitlines()) == 3


def test_a_long_file_name_is_written(tmp_path, capsys):
    name = "x" * 240 + ".png"
    cv2.imwrite(str(tmp_path / name), IMAGE)
    assert main(["run", str(tmp_path / name), "--bbox-only", "--quiet", "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["manifest.jsonl", "x" * 240 + ".jsonl", "x" * 240 + ".npz"]
    assert capsys.readouterr().err == ""  # today: the temporary name is too long ("Exception ignored in ...")


def test_unreadable_and_too_long_inputs_are_reported_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    cv2.imwrite(str(tmp_path / "good.png"), IMAGE)
    cv2.imwrite(str(tmp_path / "locked.png"), IMAGE)
    real_open = open

    def no_permission(path, *args, **kwargs):  # the tests run as root, for whom chmod 000 changes nothing
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    long_path = str(tmp_path / ("d" * 250) / ("e" * 250) / ("f" * 250)) * 6
    args = ["run", str(tmp_path / "locked.png"), long_path, str(tmp_path / "good.png"), "--bbox-only", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "locked.png: cannot be read (Permission denied); skipped" in err
    assert "File name too long" in err and "Traceback" not in err
    assert (tmp_path / "out" / "good.jsonl").is_file()


def test_out_naming_a_file_is_bad_usage(tmp_path, capsys, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), IMAGE)
    (tmp_path / "file").write_text("")
    assert main(["run", str(tmp_path / "a.png"), "--bbox-only", "--out", str(tmp_path / "file")]) == 2
    assert f"argument --out: {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "a.png"), "--bbox-only", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a parent the user cannot write (root can)
    assert main(["run", str(tmp_path / "a.png"), "--bbox-only", "--out", str(tmp_path / "new")]) == 2
    assert "argument --out: cannot write in" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("flags", "named"), [
    (["--backend", "onnx"], "argument --onnx"),
    (["--precision", "fp16"], "argument --precision"),
    (["--device", "cuda:7"], "argument --device"),
    (["--device", "banana"], "argument --device"),
    (["--onnx", "x.onnx"], "argument --onnx"),
])
def test_bad_options_exit_2_naming_the_flag(tmp_path, capsys, flags, named):
    cv2.imwrite(str(tmp_path / "a.png"), IMAGE)
    assert main(["run", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "hamer check" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- boxes

def test_huge_boxes_are_bounded_or_refused(hamer_model):
    for width in (1e6, 1e7):
        keypoints, _ = hamer_model.process(IMAGE, {"Right": [10, 10, 10 + width, 10 + width]})
        assert np.isfinite(keypoints["Right"]).all()  # today: 18 s, then MemoryError from 1e12 on
    for width in (1e12, 1e39):
        with pytest.raises(ValueError, match="beyond"):
            hamer_model.process(IMAGE, {"Right": [10, 10, 10 + width, 10 + width]})


def test_a_box_tensor_that_requires_grad(hamer_model):
    box = torch.tensor([20.0, 20.0, 80.0, 90.0], requires_grad=True)
    keypoints, boxes = hamer_model.process(IMAGE, {"Left": box})
    np.testing.assert_array_equal(boxes["Left"], [20, 20, 80, 90])


def test_the_reduced_crop_of_a_huge_box_is_within_tolerance_of_the_exact_one(monkeypatch):
    """Huge crops are blurred on a shrunk region: forced onto ordinary crops here, the result stays within 0.15
    (normalized units; 1 grey level is 0.017) and 0.005 on average of the exact path."""
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8), (0, 0), 2)
    for box, right in (([300, 250, 1900, 1400], True), ([0, 0, 2000, 1500], False), ([-900, 700, 600, 2300], True),
                       # a 3000 px crop whose region starts inside the image (x0, y0 > 0), right and mirrored
                       ([1137.5, 850, 2262.5, 2350], True), ([1137.5, 850, 2262.5, 2350], False)):
        crop = cropping.box_to_crop(np.float32(box), right)
        exact = cropping.crop_images(img, [crop])[0]
        monkeypatch.setattr(cropping, "MAX_EXACT_SIGMA", 0.0)
        monkeypatch.setattr(cropping, "REDUCED_SIGMA", 2.0)
        assert cropping.reduction_factor(cropping.blur_sigma(crop.size), 1) >= 2
        reduced = cropping.crop_images(img, [crop])[0]
        monkeypatch.undo()
        diff = np.abs(reduced - exact) / 255 / 0.225
        assert diff.max() < 0.15 and diff.mean() < 0.005, (box, diff.max(), diff.mean())


def test_ordinary_crops_take_the_exact_path():
    assert cropping.reduction_factor(cropping.blur_sigma(8000.0), 3000 * 4000) == 1  # a 4000 px box, 12 Mpx image
    assert cropping.reduction_factor(cropping.blur_sigma(40000.0), 4000 * 3000) > 1
    # the limits are inclusive: sigma 16 px, a 4096 x 4096 region
    assert cropping.reduction_factor(16.0, 4096 * 4096) == 1
    # beyond them: the blur brought to about 8 px (ceil(sigma / 8)), the region under 4096^2 (ceil of the side
    # ratio), never less than 2
    assert cropping.reduction_factor(16.01, 1) == 3 and cropping.reduction_factor(40.0, 100) == 5
    assert cropping.reduction_factor(1.0, 4096 * 4096 + 1) == 2
    assert cropping.reduction_factor(1.0, 9 * 4096 * 4096 + 1) == 4
    assert cropping.reduction_factor(20.0, 16 * 4096 * 4096) == 4 and cropping.reduction_factor(33.0, 16 * 4096**2) == 5


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    box=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                           st.floats(-1e7, 1e7), st.integers(-50, 400).map(float)), min_size=4, max_size=4),
    shape=st.sampled_from([(120, 160, 3), (50, 40), (37, 91, 4), (1, 1, 3), (300, 20, 1)]),
    dtype=st.sampled_from([np.uint8, np.float32, np.uint16]),
    right=st.booleans(),
)
def test_any_box_on_any_image_gives_a_clear_error_or_a_finite_result(hamer_model, box, shape, dtype, right):
    img = np.zeros(shape, dtype=dtype)
    try:
        keypoints, _ = hamer_model.process(img, {"Right" if right else "Left": box})
    except ValueError as exc:
        assert str(exc)
    else:
        assert all(np.isfinite(v).all() for v in keypoints.values())


# ---------------------------------------------------------------------------------------------------- data files

def _copy(data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "_DATA"
    shutil.copytree(data_dir, root)
    return root


@pytest.mark.parametrize(("text", "expected"), [
    ("MODEL: !!python/object/apply:os.system ['touch pwned']\n", "not plain YAML"),
    ("MODEL: [1, 2\n", "not plain YAML"),
    ("MODEL: [1, 2]\n", "MODEL must be a mapping"),
    ("MODEL:\n  IMAGE_SIZE: abc\n", "MODEL.IMAGE_SIZE must be a positive integer"),
    ("MODEL:\n  IMAGE_SIZE: 100000000\n", "multiple of 16 up to"),
    ("- a list\n", "not a YAML mapping"),
])
def test_bad_yaml_config_is_one_clear_error(tmp_path, text, expected):
    path = tmp_path / "model_config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert not (Path.cwd() / "pwned").exists()


def test_safetensors_metadata_that_is_not_a_json_object(data_dir, tmp_path):
    from safetensors.torch import save_file

    for meta, expected in (("not json", "not valid JSON"), ("[1, 2]", "not a JSON object")):
        path = tmp_path / "m.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={"hamer_config": meta})
        with pytest.raises(ValueError, match=expected) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_a_non_tensor_weight_is_named(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    path = root / "hamer_ckpts/checkpoints/hamer.ckpt"
    raw = torch.load(path, weights_only=False)
    raw["state_dict"]["backbone.pos_embed"] = {"not": "a tensor"}
    torch.save(raw, path)
    with pytest.raises(ValueError, match="non-tensor entries backbone.pos_embed"):
        load_checkpoint(path)


def test_a_mano_sparse_matrix_without_indptr(data_dir, tmp_path):
    from synthetic import mano_arrays, write_mano_pickle

    path = tmp_path / "MANO_RIGHT.pkl"
    write_mano_pickle(path, mano_arrays())
    blob = path.read_bytes().replace(b"indptr", b"indqtr")
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=r"MANO model .* lacks \['indptr'\]"):
        load_mano_pickle(path)


def test_a_truncated_or_oversized_mean_params_file(data_dir, tmp_path):
    path = tmp_path / "mano_mean_params.npz"
    path.write_bytes((data_dir / "data/mano_mean_params.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated") as info:
        read_mean_params(path)
    assert str(path) in str(info.value)
    np.savez(path, pose=np.zeros(96), shape=np.zeros(11), cam=np.zeros(3))
    with pytest.raises(ValueError, match="sizes"):
        read_mean_params(path)


def test_hamer_check_reports_a_bad_config_without_a_traceback(data_dir, tmp_path, capsys):
    root = _copy(data_dir, tmp_path)
    (root / "hamer_ckpts/model_config.yaml").write_text("MODEL: [1, 2]\n")
    assert main(["check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "does NOT load" in out and "MODEL must be a mapping" in out


def test_a_safetensors_file_keeps_its_own_config(data_dir, tmp_path):
    model, cfg = build_model(data_paths(data_dir))
    folder = tmp_path / "hamer_ckpts" / "checkpoints"
    folder.mkdir(parents=True)
    save_safetensors(model, cfg, folder / "hamer.safetensors")
    from synthetic import training_config

    (tmp_path / "hamer_ckpts" / "model_config.yaml").write_text(yaml.safe_dump(training_config(small=False)))
    rebuilt, rebuilt_cfg = build_model(data_paths(tmp_path, folder / "hamer.safetensors"))
    assert rebuilt_cfg.MODEL.BACKBONE.EMBED_DIM == cfg.MODEL.BACKBONE.EMBED_DIM  # not the YAML's ViT-H


# ---------------------------------------------------------------------------------------------------- options

def test_options_are_checked_where_they_are_given(tmp_path):
    with pytest.raises(ValueError, match="num_hands must be an integer from 1 to"):
        HAMER(num_hands=0)
    with pytest.raises(ValueError, match="mode must be 'IMAGE' or 'VIDEO', got 'STREAM'"):
        HAMER(mode="STREAM")
    hamer = HAMER(mode="VIDEO")
    with pytest.raises(ValueError, match="mode must be 'IMAGE' or 'VIDEO'"):
        hamer.set_mode("image")
    assert hamer.mode == "VIDEO"  # unchanged by the refused switch
    with pytest.raises(ValueError, match="rescale_factor"):
        HAMER(rescale_factor=float("inf"))
    with pytest.raises(ValueError, match="is a folder"):
        HAMER(backend="onnx", onnx_path=tmp_path).load()


def test_a_huge_timestamp_is_refused_and_the_detector_still_works():
    with HandDetector(DetectorOptions(mode="VIDEO", pose_task_path=None)) as detector:
        detector.detect(IMAGE, timestamp_ms=0)
        with pytest.raises(ValueError, match="timestamp_ms must be an integer from 0"):
            detector.detect(IMAGE, timestamp_ms=2**62)
        assert detector.detect(IMAGE, timestamp_ms=33) == []


def test_an_onnx_file_with_our_metadata_but_another_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["crops"], ["x"])], "g",
                              [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", 3, 256, 256])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 256, 256])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"hamer_config": "{}"})
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="gives outputs \\['x'\\]"):
        HAMER(backend="onnx", onnx_path=tmp_path / "other.onnx").load()


# ---------------------------------------------------------------------------------------------------- colour

def test_rgb_and_pil_images_give_the_bgr_result(hamer_model):
    from PIL import Image

    rgb = np.ascontiguousarray(IMAGE[:, :, ::-1])
    box = {"Right": [30, 20, 110, 100]}
    bgr_result = hamer_model.predict(IMAGE, box)
    for img, color in ((rgb, "RGB"), (Image.fromarray(rgb), "BGR")):
        result = hamer_model.predict(img, box, color=color)
        np.testing.assert_array_equal(result["Right"].keypoints_3d, bgr_result["Right"].keypoints_3d)
    assert not np.array_equal(hamer_model.predict(rgb, box)["Right"].keypoints_3d,
                              bgr_result["Right"].keypoints_3d)  # the order matters
    with pytest.raises(ValueError, match="color must be"):
        hamer_model.predict(IMAGE, box, color="HSV")


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="../shared/images is absent")
def test_mediapipe_on_an_rgb_photo_with_color_rgb(tmp_path):
    bgr = cv2.imread(str(SHARED_IMAGES / "test4.jpg"))
    with HAMER(data_dir=tmp_path) as hamer:
        _, boxes = hamer.process_with_mediapipe(bgr, bbox_only=True)
        _, rgb_boxes = hamer.process_with_mediapipe(np.ascontiguousarray(bgr[:, :, ::-1]), bbox_only=True,
                                                    color="RGB")
    assert sorted(boxes) == sorted(rgb_boxes) == ["Left", "Right"]
    for label in boxes:
        np.testing.assert_allclose(rgb_boxes[label], boxes[label], atol=1.0)


# ---------------------------------------------------------------------------------------------------- quiet, files

@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="../shared/images is absent")
def test_a_quiet_run_prints_nothing_on_stderr(data_dir, tmp_path):
    run = hamer_cli("run", str(SHARED_IMAGES / "test4.jpg"), "--quiet", "--data", str(data_dir), "--out",
                    str(tmp_path / "out"))
    assert run.returncode == 0 and run.stderr == "" and run.stdout == ""  # today: 60+ lines of MediaPipe logs
    assert json.loads((tmp_path / "out" / "test4.jsonl").read_text())["hands"]


def test_onnx_weights_are_written_with_default_permissions(data_dir, tmp_path):
    from hamer.export import export_onnx

    model, cfg = build_model(data_paths(data_dir))
    old = os.umask(0o022)
    try:
        export_onnx(model, cfg, tmp_path / "m.onnx", np.zeros((1, 3, 256, 256), dtype=np.float32))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx.data").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644


def test_overlay_captions_stay_on_the_image():
    img = np.zeros((60, 80, 3), np.uint8)
    hand = Hand(label="Left", box=frozen_array([70, 0, 79, 20]), score=0.5, detector="pose", detected_label="Right")
    out = draw_hands(img, [hand])
    caption_columns = np.flatnonzero((out[:, :, 0] == 255) & (out[:, :, 1] == 120))  # the Left band's colour
    assert caption_columns.size and out[:, :40].any()  # the band moved left into the image
