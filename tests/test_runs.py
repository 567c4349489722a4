"""The bookkeeping of runs into one output folder: what a second run does with earlier results, the manifest's
latest record, names, the folder's lock against a second process, poison inputs, full disks, damaged side inputs,
links out of the folder, the leftovers of killed runs. ``--bbox-only`` (no network) on images and clips made at run
time; real second processes, real signals, real ``prlimit`` limits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from processes import wait_for

from hamer.cli import main
from hamer.engines.isolated import death
from hamer.manifest import LOCK, MANIFEST
from hamer.outputs import Frame, npz_arrays
from hamer.results import FrameResult, Hand, ManoParams

from videos import manifest, temp_files

REPO = Path(__file__).resolve().parents[1]
MARKER = b"HAMER-TEST-POISON"


def noise_png(path: Path, seed: int = 0, extra: bytes = b"") -> Path:
    ok, data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert ok
    path.write_bytes(data.tobytes() + extra)
    return path


def noise_clip(path: Path, frames: int, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def run(out: Path, *args: str, data: Path | None = None) -> int:
    """``hamer run`` with ``--bbox-only``, or with the model of ``data``."""
    return main(["run", *args, *(["--bbox-only"] if data is None else ["--data", str(data)]), "--out", str(out)])


def hamer_cmd(out: Path, *args: str, data: Path | None = None) -> list[str]:
    model = ["--bbox-only"] if data is None else ["--data", str(data)]
    return [sys.executable, "-m", "hamer", "run", *args, *model, "--out", str(out), "--quiet"]


# ---------------------------------------------------------------------------------------------------- everyday runs

def test_a_new_input_is_added_and_a_done_one_skipped(tmp_path, capsys):
    a, b = noise_png(tmp_path / "a.png", 0), noise_png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    assert run(out, str(a)) == 0
    before = (out / "a.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert run(out, str(b)) == 0  # another input into the same folder: added
    assert run(out, str(a), str(b)) == 0  # both done with these options: skipped
    said = capsys.readouterr().out
    assert said.count("done earlier") == 2 and "--overwrite" in said and "0 unit(s) run now, 2 skipped" in said
    assert [(r["name"], r["status"]) for r in manifest(out)] == [("a", "done"), ("b", "done")]
    assert (out / "a.jsonl").stat().st_mtime_ns == before
    time.sleep(0.01)
    noise_png(a, 2)  # changed since: its results are stale, run again
    assert run(out, str(a), "--quiet") == 0
    assert [(r["name"], r["status"]) for r in manifest(out)] == [("a", "done"), ("b", "done"), ("a", "done")]
    assert (out / "a.jsonl").stat().st_mtime_ns > before


def test_outputs_without_a_record_are_protected(tmp_path, capsys):
    a, b = noise_png(tmp_path / "a.png", 0), noise_png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.npz").write_text("someone's file")
    (out / "b.overlay.jpg").write_text("someone's picture")
    assert run(out, str(a)) == 1
    err = capsys.readouterr().err
    assert f"{out / 'a.npz'} exists" in err and "it is not replaced; pass --overwrite" in err
    assert run(out, str(b), "--overlay") == 1 and f"{out / 'b.overlay.jpg'} exists" in capsys.readouterr().err
    assert (out / "a.npz").read_text() == "someone's file"
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "b.overlay.jpg"]
    assert run(out, str(b)) == 0  # a manifest of other inputs does not account for it either
    assert run(out, str(a)) == 1 and (out / "a.npz").read_text() == "someone's file"
    assert run(out, str(a), "--overwrite") == 0 and (out / "a.npz").read_bytes()[:2] == b"PK"


def test_the_latest_record_decides(tmp_path, capsys):
    a = noise_png(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run(out, str(a)) == 0
    (done,) = manifest(out)
    with open(out / MANIFEST, "a") as f:  # a later run failed on it: that record, not the first, is the one now
        f.write(json.dumps({**done, "status": "failed", "error": "made up", "files": []}) + "\n")
    before = (out / "a.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert run(out, str(a)) == 0
    said = capsys.readouterr().out
    assert "failed earlier (made up)" in said and "--resume" in said and "done earlier" not in said
    assert (out / "a.jsonl").stat().st_mtime_ns == before
    assert run(out, str(a), "--resume") == 0  # retried
    assert [r["status"] for r in manifest(out)] == ["done", "failed", "done"]
    assert (out / "a.jsonl").stat().st_mtime_ns > before


def test_a_failed_input_fixed_runs_again_on_resume_and_ends_done(tmp_path, capsys):
    a = tmp_path / "a.png"
    a.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))  # not decodable
    out = tmp_path / "out"
    assert run(out, str(a)) == 1
    assert run(out, str(a), "--resume") == 1  # --resume retries a failed one, unchanged: fails again
    assert [r["status"] for r in manifest(out)] == ["failed", "failed"]
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    assert run(out, str(b), "--quiet") == 1
    capsys.readouterr()
    assert run(out, str(b)) == 0 and "failed earlier" in capsys.readouterr().out  # unchanged: not retried
    time.sleep(0.01)
    noise_png(b)  # fixed: changed, so run again without --resume
    assert run(out, str(b), "--quiet") == 0 and manifest(out)[-1]["status"] == "done"
    noise_png(a)  # fixed
    assert run(out, str(a), "--resume") == 0
    records = [r for r in manifest(out) if r["name"] == "a"]
    assert [r["status"] for r in records] == ["failed", "failed", "done"] and records[-1]["files"] == ["a.jsonl",
                                                                                                      "a.npz"]
    assert len((out / "a.jsonl").read_text().splitlines()) == 1


def test_same_names_from_two_folders_stay_distinct(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = noise_png(tmp_path / "one" / "x.png", 0), noise_png(tmp_path / "two" / "x.png", 1)
    out = tmp_path / "out"
    assert run(out, str(first), str(second)) == 0
    assert sorted((Path(r["input"]).parent.name, r["name"]) for r in manifest(out)) == [("one", "x"), ("two", "x-2")]
    before = (out / "x.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert run(out, str(second)) == 0 and f"{second}: done earlier (x-2.jsonl" in capsys.readouterr().out
    assert run(out, str(second), "--overwrite") == 0  # alone, it keeps its name
    records = manifest(out)
    assert records[-1]["name"] == "x-2" and json.loads((out / "x-2.jsonl").read_text())["source"] == str(second)
    assert (out / "x.jsonl").stat().st_mtime_ns == before
    assert json.loads((out / "x.jsonl").read_text())["source"] == str(first)
    (tmp_path / "three").mkdir()
    third = noise_png(tmp_path / "three" / "x.png", 2)
    assert run(out, str(third), "--quiet") == 0  # alone, a third: the names of the others are taken
    assert manifest(out)[-1]["name"] == "x-3" and json.loads((out / "x.jsonl").read_text())["source"] == str(first)
    assert run(out, str(second), str(first), "--overwrite", "--quiet") == 0  # in another order: the same names
    assert sorted((Path(r["input"]).parent.name, r["name"]) for r in manifest(out)[-2:]) == [("one", "x"),
                                                                                            ("two", "x-2")]
    (tmp_path / "four").mkdir()
    fourth = noise_png(tmp_path / "four" / "x.png", 3)
    assert run(out, str(first), str(fourth), "--quiet") == 0  # beside the input that has "x": a new name
    assert manifest(out)[-1]["name"] == "x-4"
    shots = tmp_path / "shots.2024"  # a folder is named whole, dots and all
    shots.mkdir()
    noise_png(shots / "x.png", 4)
    assert run(out, str(shots), "--quiet") == 0 and manifest(out)[-1]["name"] == "shots.2024"


def test_a_video_one_frame_short_of_its_header_is_truncated(tmp_path):
    clip = noise_clip(tmp_path / "clip.avi", 5, "MJPG")
    data = bytearray(clip.read_bytes())  # announce 6 frames (main header and stream header); 5 are there
    main_header, stream_header = data.find(b"avih"), data.find(b"strh")
    assert struct.unpack_from("<I", data, main_header + 24) == (5,) == struct.unpack_from("<I", data,
                                                                                          stream_header + 40)
    struct.pack_into("<I", data, main_header + 24, 6)
    struct.pack_into("<I", data, stream_header + 40, 6)
    clip.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert run(out, str(clip), "--quiet") == 1
    (rec,) = manifest(out)
    assert (rec["status"], rec["frames"], rec["expected_frames"]) == ("truncated", 5, 6)
    assert "5 of the 6 frames" in rec["error"] and len((out / "clip.jsonl").read_text().splitlines()) == 5
    assert run(out, str(clip), "--quiet") == 0  # kept as it is: the same would be decoded again
    assert len(manifest(out)) == 1
    assert run(out, str(clip), "--quiet", "--resume") == 1  # retried
    assert [r["status"] for r in manifest(out)] == ["truncated", "truncated"]


def test_npz_axis_angle_of_a_global_rotation_other_than_the_joints():
    def about(axis: int, angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        i, j = (axis + 1) % 3, (axis + 2) % 3
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    joints = np.stack([about(k % 3, 0.1 * (k + 1)) for k in range(15)])
    mano = ManoParams(global_orient=about(2, 0.7)[None], hand_pose=joints, betas=np.zeros(10))
    hand = Hand(label="Right", box=np.array([0, 0, 10, 10], dtype=np.float32), mano=mano)
    arrays = npz_arrays([Frame("x.png", 0, None, FrameResult((hand,), (64, 48)))])
    np.testing.assert_allclose(arrays["global_orient_aa"][0, 0], [0, 0, 0.7], atol=1e-6)
    expected = np.zeros((15, 3))
    expected[np.arange(15), np.arange(15) % 3] = 0.1 * (np.arange(15) + 1)
    np.testing.assert_allclose(arrays["hand_pose_aa"][0, 0], expected, atol=1e-6)
    assert np.isnan(arrays["global_orient_aa"][0, 1]).all()


def test_a_unit_a_run_died_in_runs_alone_in_a_child(tmp_path, capsys, caplog):
    a, b = noise_png(tmp_path / "a.png", 0), noise_png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    assert run(out, str(a), str(b), "--quiet") == 0
    done = {r["name"]: r for r in manifest(out)}
    with open(out / MANIFEST, "a") as f:  # a run started a, then died; b died in a child (a native crash)
        f.write(json.dumps({"input": done["a"]["input"], "name": "a", "kind": "image", "status": "started",
                            "pid": 1, "host": "elsewhere", "time": "2026-01-01T00:00:00+0000"}) + "\n")
        f.write(json.dumps({**done["b"], "status": "failed", "files": [],
                            "error": "the process died while running it: SIGSEGV (a native crash)"}) + "\n")
    with caplog.at_level("WARNING", logger="hamer"):
        assert run(out, str(a), str(b), "--quiet") == 0
    assert f"{a}: an earlier run died while running it; running it alone in a child process" in caplog.text
    assert str(b) not in caplog.text  # died, unchanged: skipped
    assert [(r["name"], r["status"]) for r in manifest(out)[2:]] == [("b", "failed"), ("a", "done")]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hamer"):
        assert run(out, str(b), "--quiet", "--resume") == 0  # retried, alone again
    assert f"{b}: an earlier run died" in caplog.text and manifest(out)[-1]["status"] == "done"


# ---------------------------------------------------------------------------------------------------- two runs

def test_a_second_run_on_the_folder_is_refused_and_a_dead_runs_lock_taken_over(data_dir, tmp_path, capsys,
                                                                                 caplog):
    clip = noise_clip(tmp_path / "long.mp4", 1500)
    small = noise_png(tmp_path / "small.png")
    out = tmp_path / "out"
    first = subprocess.Popen(hamer_cmd(out, str(clip), "--formats", "jsonl,openpose", data=data_dir), cwd=REPO)
    try:
        wait_for(lambda: (out / LOCK).is_file() and (out / LOCK).read_text(), first, "took the lock")
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == first.pid
        assert run(out, str(small)) == 1  # refused at once, naming the first
        err = capsys.readouterr().err
        assert f"pid {first.pid} on {holder['host']}, since {holder['since']}" in err
        assert not (out / "small.jsonl").exists()
        wait_for(lambda: any(p.is_dir() for p in temp_files(out)), first, "started its OpenPose folder")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    left = temp_files(out)
    assert (out / LOCK).is_file() and any(p.is_dir() for p in left)
    with caplog.at_level("WARNING", logger="hamer"):
        assert run(out, str(small), "--quiet") == 0  # the dead run's lock is taken over, its leftovers removed
    assert f"took over the lock of a run that ended without releasing it (pid {first.pid}" in caplog.text
    assert temp_files(out) == [] and not (out / LOCK).exists()
    assert [r["status"] for r in manifest(out)] == ["done"]


# ---------------------------------------------------------------------------------------------------- poison

@pytest.fixture
def poison_hook(tmp_path) -> dict[str, str]:
    """The environment of a ``hamer`` process whose image decoder crashes (a real SIGSEGV) on files carrying
    MARKER: a test-only sitecustomize, standing in for a decoder bug (e.g. MediaPipe on a 32000x32000 PNG)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import cv2, os, signal\n"
        "_decode = cv2.imdecode\n"
        "def imdecode(data, flags):\n"
        f"    if {MARKER!r} in bytes(data):\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return _decode(data, flags)\n"
        "cv2.imdecode = imdecode\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_a_poison_input_crashes_one_run_then_fails_once(tmp_path, poison_hook):
    poison = noise_png(tmp_path / "poison.png", 0, extra=MARKER)
    good = noise_png(tmp_path / "good.png", 1)
    out = tmp_path / "out"
    cmd = hamer_cmd(out, str(poison), str(good), "--detect-workers", "1")
    crashed = subprocess.run(cmd, cwd=REPO, env=poison_hook, capture_output=True, timeout=300)
    assert crashed.returncode == -signal.SIGSEGV  # the first run dies on it...
    (started,) = manifest(out, started=True)
    assert started["status"] == "started" and started["name"] == "poison" and started["pid"] > 0
    again = subprocess.run(cmd, cwd=REPO, env=poison_hook, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stderr  # ...the next records it failed, and does the rest
    assert "Traceback" not in again.stderr and "SIGSEGV (a native crash)" in again.stderr
    records = {Path(r["input"]).name: r for r in manifest(out)}
    assert records["poison.png"]["status"] == "failed" and records["good.png"]["status"] == "done"
    assert records["poison.png"]["error"] == "the process died while running it: SIGSEGV (a native crash)"
    args = ["--detect-workers", "1", "--quiet"]  # the runs that meet no poison, in this process
    assert run(out, str(poison), str(good), *args) == 0 and len(manifest(out)) == 2  # unchanged: not run again
    resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, env=poison_hook, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 1 and "SIGSEGV" in resumed.stderr  # retried, alone: the run survives it
    noise_png(poison, 0)  # repaired
    assert run(out, str(poison), str(good), *args) == 0
    assert [r["status"] for r in manifest(out) if r["name"] == "poison"] == ["failed", "failed", "done"]
    assert temp_files(out) == []


def test_the_death_of_a_child_in_words():
    assert death(-signal.SIGSEGV) == "the process died while running it: SIGSEGV (a native crash)"
    assert death(-signal.SIGKILL) == "the process died while running it: SIGKILL (out of memory?)"
    assert death(-signal.SIGTERM) == "the process died while running it: SIGTERM"
    assert death(3) == "the process died while running it: it exited with status 3"


# ---------------------------------------------------------------------------------------------------- full disks

def test_a_full_disk_fails_the_unit_and_an_unwritable_manifest_stops_the_run(tmp_path):
    big = noise_clip(tmp_path / "big.mp4", 48)  # a JSONL of about 9 kB, over the 6000 bytes allowed
    small = noise_png(tmp_path / "small.png")
    out = tmp_path / "out"
    limit = ["prlimit", "--fsize=6000", "--"]
    cmd = [*limit, *hamer_cmd(out, str(big), str(small), "--formats", "jsonl", "--detect-workers", "1")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = {r["name"]: r for r in manifest(out)}
    assert records["big"]["status"] == "failed" and records["small"]["status"] == "done"
    assert "File too large" in records["big"]["error"] and str(out / "big.jsonl") in records["big"]["error"]
    assert not (out / "big.jsonl").exists() and (out / "small.jsonl").is_file() and temp_files(out) == []
    with open(out / MANIFEST, "a") as f:  # now the manifest itself is past the limit
        f.write(json.dumps({"input": "/elsewhere", "name": "elsewhere", "status": "failed", "error": "x" * 7000,
                            "files": []}) + "\n")
    size = (out / MANIFEST).stat().st_size
    small.touch()  # changed: it would run again
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: cannot write {out / MANIFEST}: File too large" in result.stderr
    assert (out / MANIFEST).stat().st_size == size and not (out / LOCK).exists()


def test_a_damaged_pose_base_fails_its_unit_naming_it(data_dir, tmp_path, capsys):
    five, three = noise_clip(tmp_path / "five.mp4", 5), noise_clip(tmp_path / "three.mp4", 3)
    other = noise_png(tmp_path / "other.png")
    assert run(tmp_path / "first", str(three), "--formats", "pose", "--quiet", data=data_dir) == 0
    bases = tmp_path / "bases"
    bases.mkdir()
    shutil.copy(tmp_path / "first" / "three.pose", bases / "five.pose")  # 3 frames, for a video of 5
    (bases / "other.pose").write_bytes(os.urandom(2000))
    out = tmp_path / "out"
    assert run(out, str(five), str(other), str(three), "--formats", "jsonl,pose", "--pose-base", str(bases),
               "--quiet", data=data_dir) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    records = {r["name"]: r for r in manifest(out)}
    assert {k: r["status"] for k, r in records.items()} == {"five": "failed", "other": "failed", "three": "done"}
    assert f"--pose-base {bases / 'five.pose'}: it has 3 frames, the video 5" in records["five"]["error"]
    assert f"--pose-base {bases / 'other.pose'}: cannot read it" in records["other"]["error"]
    assert not (out / "five.jsonl").exists() and not (out / "other.pose").exists()


# ---------------------------------------------------------------------------------------------------- links

def test_no_writes_through_links_out_of_the_folder(tmp_path, capsys):
    a = noise_png(tmp_path / "a.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).symlink_to(outside / "kept.txt")
    assert run(out, str(a)) == 1
    assert f"{out / MANIFEST} is a symbolic link" in capsys.readouterr().err
    assert (outside / "kept.txt").read_text() == "mine" and not (out / "a.jsonl").exists()
    (out / MANIFEST).unlink()
    (out / LOCK).symlink_to(outside / "kept.txt")
    assert run(out, str(a)) == 1 and f"{out / LOCK} is a symbolic link" in capsys.readouterr().err
    (out / LOCK).unlink()
    folder = tmp_path / "shots"
    folder.mkdir()
    noise_png(folder / "s.png")
    assert run(out, str(a), str(folder), "--quiet") == 0
    (out / "a.jsonl").unlink()
    (out / "a.jsonl").symlink_to(outside / "kept.txt")  # a unit's outputs planted as links
    (out / "shots.overlay").symlink_to(outside)
    assert run(out, str(a), str(folder), "--overwrite", "--overlay", "--quiet") == 1
    records = {r["name"]: r for r in manifest(out)[-2:]}  # in the order the units ended
    assert {name: r["status"] for name, r in records.items()} == {"a": "failed", "shots": "failed"}
    assert f"{out / 'a.jsonl'} is a symbolic link" in records["a"]["error"]
    assert f"{out / 'shots.overlay'} is a symbolic link" in records["shots"]["error"]
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"] and (outside / "kept.txt").read_text() == "mine"


def test_a_dead_runs_temporary_files_and_folders_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    a = noise_png(tmp_path / "a.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("mine")
    out = tmp_path / "out"
    (out / "a.overlay").mkdir(parents=True)
    (out / f".hamer-tmp-{dead}-0").mkdir()
    (out / f".hamer-tmp-{dead}-0" / "frame_000000_Right.obj").write_text("v 0 0 0\n")
    (out / f".hamer-tmp-{dead}-1.jsonl").write_text("{}\n")
    (out / "a.overlay" / f".hamer-tmp-{dead}-2.jpg").write_bytes(b"\xff\xd8")
    (out / f".hamer-tmp-{dead}-3").symlink_to(outside)
    assert run(out, str(a), "--quiet", "--overwrite") == 0
    assert temp_files(out) == [] and not (out / f".hamer-tmp-{dead}-3").is_symlink()
    assert (outside / "kept.txt").read_text() == "mine"
