"""The ``hamer`` command line end to end: run (images, folders, videos), check, convert; on the small synthetic
model, with MediaPipe on real photographs (../shared/images beside the checkout) where a test needs hands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hamer import overlay as overlay_module
from hamer.cli import main
from hamer.configs import CONFIG_METADATA_KEY
from hamer.files import TEMP_PREFIX
from hamer.hamer_module import HAMER
from hamer.outputs import NPZ_ARRAYS

from conftest import SHARED_IMAGES as IMAGES
from synthetic import make_data_dir

needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")

HAND_KEYS = {"label", "detected_label", "score", "detector", "track_id", "box", "keypoints_3d", "keypoints_2d",
             "cam_t"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_npz(path: Path, frames: int, vertices: bool = False) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    assert set(arrays) == set(NPZ_ARRAYS) - ({"vertices"} if not vertices else set())
    shapes = {"source": (frames,), "frame": (frames,), "time_s": (frames,), "image_size": (frames, 2),
              "focal_length": (frames,), "num_hands": (frames,), "present": (frames, 2), "score": (frames, 2),
              "track_id": (frames, 2), "box": (frames, 2, 4), "keypoints_3d": (frames, 2, 21, 3),
              "keypoints_2d": (frames, 2, 21, 2), "cam_t": (frames, 2, 3), "labels": (2,), "camera": (frames, 4),
              "global_orient": (frames, 2, 3, 3), "hand_pose": (frames, 2, 15, 3, 3),
              "global_orient_aa": (frames, 2, 3), "hand_pose_aa": (frames, 2, 15, 3), "betas": (frames, 2, 10)}
    if vertices:
        shapes["vertices"] = (frames, 2, 778, 3)
    assert {k: v.shape for k, v in arrays.items()} == shapes
    assert arrays["labels"].tolist() == ["Right", "Left"]
    np.testing.assert_array_equal(arrays["present"].sum(1), arrays["num_hands"])
    assert np.isnan(arrays["keypoints_3d"][~arrays["present"]]).all()
    return arrays


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.name.startswith(TEMP_PREFIX)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def noise_image(seed: int, shape=(120, 160, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- run

def test_help_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "hamer", "run", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--out", "--overlay", "--quiet", "--data", "--bbox-only", "--device", "--rescale-factor",
                 "--max-hands", "--smooth", "--min-cutoff", "--beta", "--checkpoint", "--backend", "--onnx",
                 "--precision", "--list", "--resume", "--overwrite", "--engine", "--batch-size", "--detect-workers",
                 "--workers", "--ray-address"):
        assert flag in out.stdout


@needs_images
def test_run_images_writes_jsonl_npz_and_overlays(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    images = [IMAGES / "test5.jpeg", IMAGES / "test4.jpg"]
    assert main(["run", *map(str, images), "--data", str(data_dir), "--out", str(out), "--overlay"]) == 0
    assert "test4.jsonl" in capsys.readouterr().out
    for path, labels in zip(images, (["Right"], ["Right", "Left"]), strict=True):
        (line,) = read_jsonl(out / f"{path.stem}.jsonl")
        img = cv2.imread(str(path))
        assert line["source"] == str(path) and line["frame"] == 0 and line["time_s"] is None
        assert line["image_size"] == [img.shape[1], img.shape[0]]
        assert [h["label"] for h in line["hands"]] == labels
        for hand in line["hands"]:
            assert set(hand) == HAND_KEYS and hand["track_id"] is None
            assert np.array(hand["keypoints_3d"]).shape == (21, 3) and np.array(hand["keypoints_2d"]).shape == (21, 2)
        arrays = check_npz(out / f"{path.stem}.npz", 1)
        assert arrays["present"][0].tolist() == [True, "Left" in labels]
        np.testing.assert_allclose(arrays["keypoints_2d"][0, 0], line["hands"][0]["keypoints_2d"], atol=1e-5)
        np.testing.assert_allclose(arrays["cam_t"][0, 0], line["hands"][0]["cam_t"], atol=1e-5)
        assert cv2.imread(str(out / f"{path.stem}.overlay.jpg")).shape == img.shape
    assert no_temp_files(out)


def test_run_reports_unreadable_inputs_and_goes_on(data_dir, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_noise.png"), noise_image(0))
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cv2.imwrite(str(folder / "c_noise.png"), noise_image(1))
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "missing.jpg"), str(folder), str(tmp_path / "notes.txt"), "--data", str(data_dir),
            "--out", str(out), "--overlay", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "missing.jpg: no such file" in err and "notes.txt: not an image or a video" in err
    assert "cannot read 1 image(s), skipped: " in err and "b_broken.jpg" in err
    lines = read_jsonl(out / "frames.jsonl")
    assert [(line["frame"], Path(line["source"]).name, line["hands"]) for line in lines] == [
        (0, "a_noise.png", []), (2, "c_noise.png", [])]
    arrays = check_npz(out / "frames.npz", 2)
    assert arrays["num_hands"].tolist() == [0, 0] and arrays["frame"].tolist() == [0, 2]
    assert arrays["focal_length"].tolist() == [3125.0, 3125.0]  # the camera, hands or not: 5000 / 256 * 160 px
    assert np.isnan(arrays["time_s"]).all()
    assert sorted(p.name for p in (out / "frames.overlay").iterdir()) == ["a_noise.jpg", "c_noise.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["frames.jsonl", "frames.npz", "frames.overlay", "manifest.jsonl"]


@needs_images
def test_an_error_printed_while_mediapipe_starts_in_another_thread_reaches_the_user(tmp_path):
    """MediaPipe's native output is captured by pointing descriptor 2 at a file for moments: the error line of a
    unit that fails meanwhile (printed by the writer thread) must still reach the terminal. Before the command line
    kept its stderr apart, this line was lost in 3 of 3 runs."""
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + noise)  # an MP4 header, then noise
    writer = cv2.VideoWriter(str(tmp_path / "a.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(6):
        writer.write(cv2.resize(cv2.imread(str(IMAGES / "test5.jpeg")), (320, 240)))
    writer.release()
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        run = subprocess.run([sys.executable, "-m", "hamer", "run", str(tmp_path / "corrupt.mp4"),
                              str(tmp_path / "a.mp4"), "--bbox-only", "--quiet", "--out", str(out)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 1
        assert f"error: {tmp_path / 'corrupt.mp4'}: " in run.stderr, run.stderr


@needs_images
def test_run_bbox_only_needs_no_model(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "no_data"
    assert main(["run", str(IMAGES / "test5.jpeg"), "--bbox-only", "--data", str(empty), "--out", str(out),
                 "--overlay", "--quiet"]) == 0
    (line,) = read_jsonl(out / "test5.jsonl")
    (hand,) = line["hands"]
    assert hand["label"] == "Right" and hand["keypoints_3d"] is None and len(hand["box"]) == 4
    arrays = check_npz(out / "test5.npz", 1)
    assert np.isfinite(arrays["box"][0, 0]).all() and np.isnan(arrays["keypoints_3d"][0, 0]).all()
    assert cv2.imread(str(out / "test5.overlay.jpg")).shape == (480, 640, 3)


def test_run_without_a_model_fails_clearly(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "x.png"), noise_image(0))
    assert main(["run", str(tmp_path / "x.png"), "--data", str(tmp_path / "no_data"), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot set up the model" in err and "hamer check" in err
    assert not (tmp_path / "out").exists()  # set-up failed: no empty output folder left behind


@needs_images
def test_video_round_trip(data_dir, tmp_path):
    """A clip made from a photo (slowly panning), tracked and smoothed: a line per frame, an MP4 overlay."""
    img = cv2.imread(str(IMAGES / "test5.jpeg"))
    frames = [cv2.warpAffine(img, np.float32([[1, 0, 2 * i], [0, 1, i]]), (640, 480)) for i in range(6)]
    write_video(tmp_path / "clip.mp4", frames, fps=10)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "clip.mp4"), "--data", str(data_dir), "--out", str(out), "--overlay",
                 "--smooth", "--quiet"]) == 0
    lines = read_jsonl(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == list(range(6))
    np.testing.assert_allclose([line["time_s"] for line in lines], np.arange(6) / 10)
    rights = [[h for h in line["hands"] if h["label"] == "Right"] for line in lines]
    assert [[h["track_id"] for h in r] for r in rights] == [[0]] * 6  # one right hand, one identity
    arrays = check_npz(out / "clip.npz", 6)
    assert arrays["track_id"][:, 0].tolist() == [0] * 6
    cap = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    shapes = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    assert shapes == [(480, 640, 3)] * 6
    assert no_temp_files(out)


def test_video_interrupted_leaves_no_partial_file(data_dir, tmp_path, monkeypatch, capsys):
    write_video(tmp_path / "noise.mp4", [noise_image(i) for i in range(5)])
    calls = []

    def draw_then_interrupt(img, result, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return img

    monkeypatch.setattr(overlay_module, "draw", draw_then_interrupt)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "noise.mp4"), "--data", str(data_dir), "--out", str(out), "--overlay",
                 "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["manifest.jsonl"]  # no JSONL, NPZ or MP4, whole or temporary
    assert [json.loads(line)["status"] for line in (out / "manifest.jsonl").read_text().splitlines()] == [
        "started", "interrupted"]  # in flight when stopped: not a suspect of a crash
    monkeypatch.undo()
    assert main(["run", str(tmp_path / "noise.mp4"), "--data", str(data_dir), "--out", str(out), "--overlay",
                 "--quiet"]) == 0
    assert [line["hands"] for line in read_jsonl(out / "noise.jsonl")] == [[]] * 5
    check_npz(out / "noise.npz", 5)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "noise.jsonl", "noise.npz", "noise.overlay.mp4"]


# ---------------------------------------------------------------------------------------------------- check

def test_check_complete_folder(data_dir, capsys):
    assert main(["check", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint alone is enough" in out and "MISSING" not in out
    assert out.count(" found ") == 5 and "model: loads" in out


def test_check_incomplete_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["check", "--data", str(empty)]) == 1
    out = capsys.readouterr().out
    assert f"MISSING  {empty.resolve() / 'hamer_ckpts/checkpoints/hamer.ckpt'}: run `hamer download --data" in out
    assert f"put MANO_RIGHT.pkl at {empty.resolve() / 'data/mano/MANO_RIGHT.pkl'}" in out
    assert "mano.is.tue.mpg.de" in out and "does NOT load" in out

    alone = tmp_path / "alone"
    make_data_dir(alone, with_mano=False, with_means=False, with_config=False)
    assert main(["check", "--data", str(alone)]) == 0
    out = capsys.readouterr().out
    assert out.count("not needed: the checkpoint carries it") == 3 and "model: loads" in out

    no_mano = tmp_path / "no_mano"
    make_data_dir(no_mano, with_mano=False)
    ckpt = no_mano / "hamer_ckpts/checkpoints/hamer.ckpt"
    raw = torch.load(ckpt, weights_only=False)
    raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.startswith("mano.")}
    torch.save(raw, ckpt)
    assert main(["check", "--data", str(no_mano)]) == 1
    out = capsys.readouterr().out
    assert "MANO (mano.*): no" in out and "MANO model   MISSING" in out and "does NOT load" in out


# ---------------------------------------------------------------------------------------------------- convert

@pytest.mark.parametrize("half", [False, True])
def test_convert_round_trip(data_dir, tmp_path, half, capsys):
    from safetensors import safe_open

    target = tmp_path / "model" / "hamer.safetensors"
    ckpt = data_dir / "hamer_ckpts/checkpoints/hamer.ckpt"
    assert main(["convert", str(ckpt), str(target), "--data", str(data_dir)] + (["--half"] if half else [])) == 0
    assert "wrote" in capsys.readouterr().out
    with safe_open(str(target), framework="pt") as f:
        keys = set(f.keys())
        config = json.loads(f.metadata()[CONFIG_METADATA_KEY])
        dtype = f.get_tensor("backbone.pos_embed").dtype
    assert dtype == (torch.float16 if half else torch.float32)
    assert not any(k.startswith("discriminator") or k == "initialized" for k in keys)
    assert {"mano.v_template", "mano_head.init_cam"} <= keys and config["MODEL"]["BACKBONE"]["DEPTH"] == 2

    img = noise_image(3, (240, 320, 3))
    boxes = {"Right": [40, 40, 140, 160], "Left": [150, 60, 260, 200]}
    expected, _ = HAMER(data_dir=data_dir).process(img, boxes)
    empty = tmp_path / "no_data"  # no model_config.yaml, MANO pkl or mean params: the file alone must do
    got, _ = HAMER(data_dir=empty, checkpoint=target).process(img, boxes)
    for label in boxes:
        np.testing.assert_allclose(got[label], expected[label], atol=2e-3 if half else 1e-5)
    assert main(["check", "--data", str(empty), "--checkpoint", str(target)]) == 0


def test_convert_rejects_other_suffixes(data_dir, tmp_path, capsys):
    assert main(["convert", str(data_dir / "hamer_ckpts/checkpoints/hamer.ckpt"), str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


@needs_images
def test_run_with_the_onnx_backend_matches_torch(data_dir, tmp_path):
    onnx_path = tmp_path / "hamer.onnx"
    img = cv2.imread(str(IMAGES / "test4.jpg"))
    with HAMER(data_dir=data_dir, export_onnx=onnx_path) as hamer:
        hamer.process_with_mediapipe(img)
    image = str(IMAGES / "test4.jpg")
    assert main(["run", image, "--data", str(data_dir), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    assert main(["run", image, "--data", str(tmp_path / "no_data"), "--backend", "onnx", "--onnx", str(onnx_path),
                 "--out", str(tmp_path / "onnx"), "--quiet"]) == 0
    torch_hands = read_jsonl(tmp_path / "torch" / "test4.jsonl")[0]["hands"]
    onnx_hands = read_jsonl(tmp_path / "onnx" / "test4.jsonl")[0]["hands"]
    assert [h["label"] for h in onnx_hands] == [h["label"] for h in torch_hands] and onnx_hands
    for a, b in zip(onnx_hands, torch_hands, strict=True):
        np.testing.assert_allclose(a["keypoints_3d"], b["keypoints_3d"], atol=1e-5)


def test_run_onnx_backend_without_a_file_fails_clearly(tmp_path, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), noise_image(0))
    assert main(["run", str(img), "--backend", "onnx", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "argument --onnx: backend 'onnx' needs an .onnx file" in capsys.readouterr().err
    assert main(["run", str(img), "--backend", "onnx", "--onnx", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"argument --onnx: {tmp_path} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
