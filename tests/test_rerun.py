"""Rerun recordings (viewer.py, formats/rerun.py, ``hamer run --rerun``, ``hamer view``), read back with Rerun's own
command line (``rerun rrd verify`` / ``rerun rrd print``); the overlay video of a run, its codec read back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from hamer.cli import main
from hamer.formats.rerun import RerunWriter
from hamer.outputs import Frame
from hamer.results import Camera, FrameResult, Hand, frozen_array

from videos import pan_zoom, write_video

rr = pytest.importorskip("rerun")
RERUN = shutil.which("rerun")
needs_rerun_cli = pytest.mark.skipif(RERUN is None, reason="the rerun command (rerun-sdk) is not on PATH")
IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
FACES = np.array([[0, 1, 2], [0, 2, 3]])


def mesh_rows(path: Path) -> Counter:
    """Rows logged of each archetype at each entity of a recording (``"Mesh3D@/world/hands/Right/mesh"``), by
    ``rerun rrd print -v`` (the file verified first by ``rerun rrd verify``)."""
    assert subprocess.run([RERUN, "rrd", "verify", str(path)], capture_output=True).returncode == 0
    text = subprocess.run([RERUN, "rrd", "print", "-v", str(path)], capture_output=True, text=True, check=True).stdout
    rows: Counter = Counter()
    for count, entity, columns in re.findall(r"with (\d+) rows .*? - (/\S+) - data columns: \[(.*)\]", text):
        for archetype in {column.split(":")[0].split("@", 1)[1] for column in columns.split()}:
            rows[f"{archetype}@{entity}"] += int(count)
    return rows


def hand(label: str, z: float) -> Hand:
    square = np.array([[-0.05, -0.05, 0.0], [0.05, -0.05, 0.0], [0.05, 0.05, 0.0], [-0.05, 0.05, 0.0]])
    return Hand(label=label, box=frozen_array([10, 10, 50, 60]), score=0.9, detector="hand",
                keypoints_3d=frozen_array(np.zeros((21, 3))), keypoints_2d=frozen_array(np.full((21, 2), 20.0)),
                cam_t=frozen_array([0.0, 0.0, z]), vertices=frozen_array(square))


@needs_rerun_cli
def test_a_recording_holds_one_mesh_per_hand_per_frame(tmp_path):
    camera = Camera(100.0, 100.0, 40.0, 30.0)
    frames = [(hand("Right", 0.5), hand("Left", 0.6)), (hand("Right", 0.5),), ()]
    path = tmp_path / "clip.rrd"
    with RerunWriter(path, FACES) as writer:
        for i, hands in enumerate(frames):
            result = FrameResult(hands, (80, 60), camera)
            writer.add(Frame("clip.mp4", i, i / 10, result), np.full((60, 80, 3), 30 * i, np.uint8))
    rows = mesh_rows(path)
    assert rows["Mesh3D@/world/hands/Right/mesh"] == 2 and rows["Mesh3D@/world/hands/Left/mesh"] == 1
    assert rows["Pinhole@/world/camera"] == 3 and rows["EncodedImage@/world/camera/image"] == 3
    assert rows["Clear@/world/hands/Left"] == 2 and rows["Clear@/world/hands/Right"] == 1  # absent: cleared
    assert rows["Boxes2D@/world/camera/image/boxes"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["clip.rrd"]


def test_a_failed_recording_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), RerunWriter(tmp_path / "clip.rrd", FACES) as writer:
        writer.add(Frame("a.jpg", 0, None, FrameResult((hand("Right", 0.5),), (80, 60), None)), None)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_without_rerun_the_extra_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun now raises ImportError
    from hamer import log_rerun

    with pytest.raises(ImportError, match=re.escape('pip install "hamer[viewer]"')):
        log_rerun(FrameResult((), (8, 8)))
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    assert main(["run", str(image), "--rerun", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'argument --rerun: Rerun recordings need rerun-sdk: pip install "hamer[viewer]"' in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    (tmp_path / "a.rrd").write_bytes(b"")
    assert main(["view", str(tmp_path / "a.rrd")]) == 2 and "hamer[viewer]" in capsys.readouterr().err


def test_view_names_a_missing_file_and_a_missing_display(tmp_path, monkeypatch, capsys):
    assert main(["view", str(tmp_path / "none.rrd")]) == 2
    assert "none.rrd is not found" in capsys.readouterr().err
    if RERUN is None or not sys.platform.startswith("linux"):
        return
    (tmp_path / "a.rrd").write_bytes(b"")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", str(tmp_path / "a.rrd")]) == 1
    assert "no display" in capsys.readouterr().err


def test_side_view_and_rerun_flags_are_checked(tmp_path, capsys):
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    for args in (["--side-view"], ["--overlay", "skeleton", "--side-view"], ["--overlay", "--bbox-only",
                                                                            "--side-view"]):
        assert main(["run", str(image), "--out", str(tmp_path / "out"), *args]) == 2
        assert "argument --side-view: needs the mesh overlay" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(image), "--overlay", "wireframe"])
    assert "invalid choice: 'wireframe'" in capsys.readouterr().err


@needs_rerun_cli
@pytest.mark.skipif(not (IMAGES / "test5.jpeg").exists(), reason="needs ../shared/images")
def test_run_writes_a_browser_video_with_side_view_and_a_recording(data_dir, tmp_path):
    av = pytest.importorskip("av")
    write_video(tmp_path / "clip.mp4", pan_zoom("test5.jpeg", 4), fps=10)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "clip.mp4"), "--data", str(data_dir), "--out", str(out), "--overlay",
                 "--side-view", "--rerun", "--quiet"]) == 0
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert record["files"] == ["clip.jsonl", "clip.npz", "clip.rrd", "clip.overlay.mp4"]
    with av.open(str(out / "clip.overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
    assert len(frames) == 4 and frames[0].shape == (240, 640, 3)  # the image and the side panel
    assert (frames[0][:10, 330:] > 230).all()  # the side panel's white
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    per_side = Counter(h["label"] for line in lines for h in line["hands"])
    assert sum(per_side.values()) > 0
    rows = mesh_rows(out / "clip.rrd")
    for label in ("Right", "Left"):
        assert rows[f"Mesh3D@/world/hands/{label}/mesh"] == per_side[label]
