"""Corpus runs: batching across frames, the local engine against frame by frame, the manifest, failures,
truncated videos, refusal to overwrite, resume after SIGKILL. Small synthetic model; clips made at run time from
the photographs (../shared/images) with a pan and zoom, and from noise."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
from processes import wait_for

from hamer.cli import main
from hamer.corpus import MANIFEST, Options, run_corpus
from hamer.engines import StageStats
from hamer.frames import read_frames
from hamer.hamer_module import HAMER
from hamer.pipeline import best_per_label, find_hands
from hamer.tracking import HandTracker, OneEuroFilter, VideoHands

from conftest import SHARED_IMAGES as IMAGES
from videos import manifest, pan_zoom, temp_files, write_video

needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two clips with hands, one noise clip, a truncated one (an MJPG AVI cut in half) and a corrupt one."""
    if not IMAGES.is_dir():
        pytest.skip(f"test photographs not found at {IMAGES}")
    root = tmp_path_factory.mktemp("clips")
    clips = {
        "two": write_video(root / "two.mp4", pan_zoom("test4.jpg", 6)),
        "one": write_video(root / "one.mp4", pan_zoom("test5.jpeg", 5)),
        "noise": write_video(root / "noise.mp4", [np.random.default_rng(i).integers(0, 255, (120, 160, 3),
                                                                                    dtype=np.uint8)
                                                  for i in range(4)]),
    }
    full = write_video(root / "full.avi", pan_zoom("test5.jpeg", 10), fourcc="MJPG")
    data = full.read_bytes()
    (root / "cut.avi").write_bytes(data[: len(data) // 2])
    clips["cut"] = root / "cut.avi"
    mp4 = clips["one"].read_bytes()
    (root / "corrupt.mp4").write_bytes(mp4[: len(mp4) // 2])  # the index (moov) is at the end: unreadable
    clips["corrupt"] = root / "corrupt.mp4"
    return clips


# ---------------------------------------------------------------------------------------------------- batching

@needs_images
def test_batch_of_frames_equals_one_frame_at_a_time(data_dir):
    """Crops of several frames in one network call give each frame's hands as one call per frame does."""
    hamer = HAMER(data_dir=data_dir)
    frames = [cv2.imread(str(IMAGES / name)) for name in ("test4.jpg", "test5.jpeg", "test6.jpg")]
    with hamer:
        hands = [find_hands(img, detector=hamer.detector, select=best_per_label)[0] for img in frames]
    assert [len(h) for h in hands][:2] == [2, 1]
    rec = hamer.reconstructor
    one_by_one = [rec(img, h) for img, h in zip(frames, hands, strict=True)]
    batched = rec.batch(list(zip(frames, hands, strict=True)))
    for single, joint in zip(one_by_one, batched, strict=True):
        assert [h.label for h in single] == [h.label for h in joint]
        for a, b in zip(single, joint, strict=True):
            np.testing.assert_allclose(b.keypoints_3d, a.keypoints_3d, atol=1e-7)  # 1e-4 mm
            np.testing.assert_allclose(b.cam_t, a.cam_t, atol=1e-7)
            np.testing.assert_allclose(b.keypoints_2d, a.keypoints_2d, atol=1e-3)
            np.testing.assert_array_equal(b.box_center, a.box_center)


# ---------------------------------------------------------------------------------------------------- local engine

def frame_by_frame(data_dir: Path, video: Path, fps: float = 10.0) -> list:
    """Today's loop: VideoHands called frame after frame (tracked, smoothed)."""
    hamer = HAMER(mode="VIDEO", data_dir=data_dir)
    video_hands = VideoHands(hamer.detector, hamer.reconstructor, HandTracker(label_hold=5),
                             partial(OneEuroFilter, 1.0, 10.0))
    cap = cv2.VideoCapture(str(video))
    results = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        results.append(video_hands(img, int(round(len(results) * 1000 / fps))))
    hamer.close()
    return results


@needs_images
def test_local_engine_equals_frame_by_frame(data_dir, clips, tmp_path):
    out = tmp_path / "out"
    stats = StageStats()
    options = Options(data=str(data_dir), smooth=True, batch_size=3, detect_workers=2)
    records = run_corpus([str(clips["two"]), str(clips["one"])], out, options, stats=stats)
    assert sorted((r["name"], r["status"], r["frames"]) for r in records) == [("one", "done", 5), ("two", "done", 6)]
    assert records == manifest(out)
    for name in ("two", "one"):
        expected = frame_by_frame(data_dir, clips[name])
        with np.load(out / f"{name}.npz") as npz:
            got = dict(npz)
        assert got["num_hands"].tolist() == [len(r.hands) for r in expected]
        assert sum(got["num_hands"]) > 0
        for i, result in enumerate(expected):
            for hand in result.hands:
                slot = ["Right", "Left"].index(hand.label)
                assert got["track_id"][i, slot] == hand.track_id
                np.testing.assert_allclose(got["keypoints_3d"][i, slot], hand.keypoints_3d, atol=1e-7)  # 1e-4 mm
                np.testing.assert_allclose(got["cam_t"][i, slot], hand.cam_t, atol=1e-7)
    assert stats.frames == 11 and stats.units == 2
    assert all(stats.seconds[s] > 0 for s in ("decode", "detect", "crop", "network", "write"))
    assert temp_files(out) == []


def test_read_frames_counts_a_truncated_video(clips):
    from hamer.corpus import classify
    from hamer.frames import Decoded, outcome

    (unit,) = classify(clips["cut"])
    decoded = Decoded()
    frames = list(read_frames(unit, decoded))
    assert unit.frames == 10 and 0 < decoded.frames == len(frames) < 10
    status, error = outcome(unit, decoded)
    assert status == "truncated" and f"{decoded.frames} of the 10 frames" in error


@needs_images
def test_corrupt_and_truncated_inputs_are_recorded_and_the_rest_done(data_dir, clips, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", str(clips["corrupt"]), str(clips["one"]), str(clips["cut"]), str(tmp_path / "missing.mp4"),
            str(clips["noise"]), "--data", str(data_dir), "--out", str(out), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "cut.avi: truncated:" in err and "corrupt.mp4: not " in err and "missing.mp4: no such file" in err
    records = {Path(r["input"]).name: r for r in manifest(out)}
    assert {k: r["status"] for k, r in records.items()} == {
        "corrupt.mp4": "failed", "one.mp4": "done", "cut.avi": "truncated", "missing.mp4": "failed",
        "noise.mp4": "done"}
    cut = records["cut.avi"]
    assert 0 < cut["frames"] < cut["expected_frames"] == 10 and cut["files"] == ["cut.jsonl", "cut.npz"]
    assert len((out / "cut.jsonl").read_text().splitlines()) == cut["frames"]  # the decoded frames are kept
    assert records["corrupt.mp4"]["files"] == [] and not (out / "corrupt.jsonl").exists()
    assert records["noise.mp4"]["frames"] == 4 and records["noise.mp4"]["hands"] == 0
    assert all(r["seconds"] >= 0 and r["error"] is None for r in records.values() if r["status"] == "done")


def test_skips_what_is_done_refuses_other_options_then_resumes_or_overwrites(data_dir, clips, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["run", str(clips["noise"]), "--data", str(data_dir), "--out", str(out)]
    assert main([*base, "--quiet"]) == 0
    before = (out / "noise.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(base) == 0  # the same options: done, skipped, said so
    said = capsys.readouterr().out
    assert f"{clips['noise']}: done earlier" in said and "--overwrite" in said and "0 unit(s) run now" in said
    assert (out / "noise.jsonl").stat().st_mtime_ns == before and len(manifest(out)) == 1
    lines = (out / MANIFEST).read_bytes()
    assert main([*base, "--formats", "jsonl"]) == 1  # other options: refused, nothing touched
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--formats" in err and "noise.jsonl" in err
    assert (out / MANIFEST).read_bytes() == lines and (out / "noise.jsonl").stat().st_mtime_ns == before
    listed = tmp_path / "list.txt"
    listed.write_text(f"# the corpus\n{clips['noise']}\n\n{clips['corrupt']}\n")
    assert main(["run", "--list", str(listed), "--resume", "--data", str(data_dir), "--out", str(out),
                 "--quiet"]) == 1  # the corrupt one fails; the noise clip is skipped
    assert [(Path(r["input"]).name, r["status"]) for r in manifest(out)] == [("noise.mp4", "done"),
                                                                             ("corrupt.mp4", "failed")]
    assert (out / "noise.jsonl").stat().st_mtime_ns == before
    assert main([*base, "--overwrite", "--formats", "jsonl", "--quiet"]) == 0
    records = manifest(out)  # appended: the old records stay, the latest decides
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [("noise.mp4", "done"),
                                                                       ("corrupt.mp4", "failed"), ("noise.mp4", "done")]
    assert records[-1]["files"] == ["noise.jsonl"] and records[-1]["options"]["formats"] == ["jsonl"]
    assert (out / "noise.jsonl").stat().st_mtime_ns > before


def test_bad_usage_exits_2_naming_the_flag(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.mp4", "--resume", "--overwrite"])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert "--list" in capsys.readouterr().err
    assert main(["run", "x.mp4", "--workers", "2", "--out", str(tmp_path)]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert main(["run", "--list", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2
    assert "--list" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["run", "x.mp4", "--engine", "ray", "--out", str(tmp_path)]) == 2
    assert 'pip install "hamer[ray]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@needs_images
def test_sigkill_mid_run_then_resume_does_every_input_once(data_dir, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", pan_zoom(photo, 12)) for i, photo in
              enumerate(("test4.jpg", "test5.jpeg", "test4.jpg", "test5.jpeg"))]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hamer", "run", *map(str, videos), "--data", str(data_dir), "--out", str(out),
           "--quiet", "--detect-workers", "1", "--overlay"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill once a unit is done, the next half-written (generous: a loaded machine slows the start-up)
        wait_for(lambda: (out / MANIFEST).exists() and manifest(out) and temp_files(out), proc,
                 "reached the middle of its second unit", 300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = manifest(out)
    assert 1 <= len(first) < 4 and temp_files(out)  # killed mid-unit: a temporary file left behind
    again = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    records = manifest(out)
    assert sorted(r["input"] for r in records) == sorted(map(str, videos))  # each input done exactly once
    assert all(r["status"] == "done" for r in records) and temp_files(out) == []
    for video in videos:
        lines = (out / f"{video.stem}.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == list(range(12))
        assert (out / f"{video.stem}.overlay.mp4").is_file()


def test_run_corpus_rejects_resume_with_overwrite(tmp_path):
    with pytest.raises(ValueError, match="resume and overwrite"):
        run_corpus([], tmp_path, resume=True, overwrite=True)



def test_list_from_standard_input(monkeypatch):
    import io

    from hamer.corpus import read_list

    monkeypatch.setattr(sys, "stdin", io.StringIO("a.mp4\n  # comment\n\n b dir/ \n"))
    assert read_list("-") == ["a.mp4", "b dir/"]


def test_the_mediapipe_check_fails_early_and_its_detector_serves_the_first_video(data_dir, clips, tmp_path,
                                                                                monkeypatch):
    import hamer.detection
    from hamer.corpus import ModelError

    made = []
    original = hamer.detection.HandDetector.__init__

    def counted(self, options=None):
        made.append(options.mode)
        original(self, options)

    monkeypatch.setattr(hamer.detection.HandDetector, "__init__", counted)
    options = Options(data=str(data_dir), detect_workers=1)
    run_corpus([str(clips["two"])], tmp_path / "one", options)
    assert made == ["VIDEO"]  # the check's detector ran the video: no second MediaPipe made
    run_corpus([str(clips["two"]), str(clips["noise"])], tmp_path / "two", options)
    assert made == ["VIDEO"] * 3
    monkeypatch.setattr(hamer.detection, "HAND_TASK_PATH", tmp_path / "missing.task")
    with pytest.raises(ModelError, match="MediaPipe: .*missing.task"):
        run_corpus([str(clips["two"])], tmp_path / "bad", options)
    assert not (tmp_path / "bad").exists()  # before anything is written
