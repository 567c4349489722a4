"""Video segments (hamer.segments): segmented runs against unsegmented ones on clips made from the photographs
(../shared/images) whose hands cross the segment borders and whose scenes change mid-segment, the part files' round
trip, the join's files, a run killed mid-video and resumed, a failed segment and --resume, the Ray engine. Small
synthetic model."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from pose_format import Pose
from processes import wait_for
from ray_helpers import short_temp_dir

from hamer.boxfile import BoxFileDetectors
from hamer.configs import CHECKPOINT_FILE
from hamer.corpus import Options, run_corpus
from hamer.detectors import FrameRef, HandDetection
from hamer.frames import Decoded, read_frames
from hamer.hamer_module import HAMER
from hamer.manifest import MANIFEST, Manifest, OverwriteError
from hamer.outputs import Frame
from hamer.segment_parts import Part, PartWriter
from hamer.segments import bounds
from hamer.tracking import HandTracker, OneEuroFilter, VideoHands
from hamer.unit_writer import UnitWriter
from hamer.units import Unit

from conftest import SHARED_IMAGES as IMAGES
from conftest import built_once
from videos import manifest, scenes, temp_files, write_video

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")
REPO = Path(__file__).resolve().parents[1]
SEGMENT = 25  # frames a segment; the clip: 4 scenes of 30 frames, so borders fall inside scenes and tracks
# frames of warm-up: fewer than the default (90), so that the warm-ups of the later segments start after frame 0
WARMUP = 30
FORMATS = ("jsonl", "npz", "pose", "openpose")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """120 frames at 30 fps: four scenes (two hands, two, one, two), each drifting and zooming. Made once a test
    run (the Ray test runs on another xdist worker than the others: :func:`conftest.built_once`)."""
    folder = built_once(tmp_path_factory, "segments_clip", lambda f: write_video(f / "clip.mp4", scenes(30), fps=30.0))
    return folder / "clip.mp4"


@pytest.fixture(scope="module")
def whole(clip, data_dir, tmp_path_factory) -> Path:
    """The unsegmented run's output folder (every format, an overlay); run once a test run for the checkpoint's
    weights (every worker's synthetic data folder holds the same seeded ones: named by their hash, to be sure)."""
    weights = hashlib.sha256((data_dir / CHECKPOINT_FILE).read_bytes()).hexdigest()[:16]
    return built_once(tmp_path_factory, f"segments_whole_{weights}", lambda out: run_corpus(
        [str(clip)], out, Options(data=str(data_dir), formats=FORMATS, overlay=True, segment_frames=0)))


@pytest.fixture(scope="module")
def recorded_boxes(whole) -> Path:
    """The whole run's boxes as a box file (hamer.boxfile): runs that read them detect nothing (no MediaPipe),
    so their cost is the network's and the writers'."""
    path = whole.parent / f"{whole.name}.boxes.jsonl"
    if not path.exists():
        lines = [json.loads(line) for line in (whole / "clip.jsonl").read_text().splitlines()]
        path.write_text("".join(json.dumps({"frame": line["frame"], "hands": [
            {k: hand[k] for k in ("label", "box", "score")} for hand in line["hands"]]}) + "\n" for line in lines))
    return path


def agreement(a: Path, b: Path) -> tuple[float, float]:
    """(fraction of frames with the same hands, labels and track ids; max joint difference in mm) of two NPZ."""
    with np.load(a) as x, np.load(b) as y:
        assert x["frame"].tolist() == y["frame"].tolist()
        same = (x["present"] == y["present"]).all(1) & (x["track_id"] == y["track_id"]).all(1)
        joints = np.abs(x["keypoints_3d"] - y["keypoints_3d"])
        assert (np.isnan(joints) == ~x["present"][:, :, None, None]).all()
        return float(same.mean()), float(np.nanmax(joints)) * 1000


def test_the_manifest_keeps_segment_lines_apart_from_their_videos(tmp_path):
    lines = [{"input": "/v", "status": "done", "files": ["v.jsonl"]},
             {"input": "/v", "segment": [0, 25], "status": "started"},
             {"input": "/v", "segment": [0, 25], "status": "done"},
             {"input": "/v", "segment": [25, 50], "status": "failed"},
             {"input": "/w", "segment": "bad", "status": "done"}]
    (tmp_path / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in lines))
    book = Manifest(tmp_path)
    assert book.load() == {"/v": lines[0]}
    assert book.segments == {("/v", 0, 25): lines[2], ("/v", 25, 50): lines[3]}


def test_bounds_cover_the_video_once(tmp_path):
    assert bounds(60, 25) == [(0, 25), (25, 50), (50, 60)]
    assert bounds(25, 25) == bounds(26, 0) == bounds(0, 25) == []  # one unit: short, off, or unknown length
    with pytest.raises(ValueError, match="segment_frames and segment_warmup must be >= 0"):
        run_corpus([], tmp_path, Options(segment_warmup=-1))


@pytest.mark.parametrize("fourcc, suffix", [("mp4v", "mp4"), ("MJPG", "avi")])
def test_a_segment_reads_the_frames_of_a_whole_read(tmp_path, fourcc, suffix):
    video = write_video(tmp_path / f"v.{suffix}", scenes(12), fps=30.0, fourcc=fourcc)
    unit = Unit(str(video), "video", frames=48, fps=30.0)
    every = [img for _, _, _, img in read_frames(unit, Decoded())]
    decoded = Decoded()
    got = list(read_frames(Unit(**{**vars(unit), "segment": (30, 40)}), decoded, warmup=7))
    assert [index for index, *_ in got] == list(range(23, 40))
    assert all(np.array_equal(img, every[index]) for index, _, _, img in got)
    assert (decoded.frames, decoded.before) == (17, 7)
    past = Decoded()
    assert list(read_frames(Unit(**{**vars(unit), "segment": (50, 60)}), past, warmup=0)) == []
    assert past.frames == 0


def test_a_part_file_joins_into_the_files_a_whole_run_writes(data_dir, tmp_path):
    """Frames through a part file and back write byte for byte the files they write directly."""
    video = write_video(tmp_path / "v.mp4", scenes(5, ("test4.jpg", "test5.jpeg")), fps=30.0)
    hamer = HAMER(mode="VIDEO", data_dir=data_dir)
    hands = VideoHands(hamer.detector, hamer.reconstructor, HandTracker(), lambda: OneEuroFilter(1.0, 10.0))
    unit = Unit(str(video), "video", name="v", frames=10, fps=30.0)
    frames, images = [], []
    for index, time_s, source, img in read_frames(unit, Decoded()):
        frames.append(Frame(source, index, time_s, hands(img, index * 33)))
        images.append(img)
    faces = hamer.faces
    hamer.close()
    assert sum(len(f.result.hands) for f in frames) >= 10
    options = Options(formats=("jsonl", "npz", "pose", "openpose", "obj"), vertices=True)
    assert faces is not None
    for name in ("direct", "joined"):
        (tmp_path / name).mkdir()
    with UnitWriter(unit, tmp_path / "direct", options, faces) as writer:
        for frame, img in zip(frames, images, strict=True):
            writer.add(frame, img)
    warm = [(99, frames[3].result.hands)]
    segment = Unit(**{**vars(unit), "segment": (0, 10)})
    with PartWriter(segment, tmp_path / "parts", options, faces, warm) as part:
        for frame in frames:
            part.add(frame)
    back = Part(tmp_path / "parts" / part.files[0])
    assert {i: [(t, lab) for t, lab, _ in v] for i, v in back.warmup.items()} == {
        99: [(h.track_id, h.label) for h in frames[3].result.hands]}
    np.testing.assert_array_equal(back.faces, faces)
    with UnitWriter(unit, tmp_path / "joined", options, back.faces) as writer:
        for frame in back.frames(str(video), {}):
            writer.add(frame, None)
    direct = sorted(p.relative_to(tmp_path / "direct") for p in (tmp_path / "direct").rglob("*") if p.is_file())
    assert len(direct) > 10 and direct == sorted(
        p.relative_to(tmp_path / "joined") for p in (tmp_path / "joined").rglob("*") if p.is_file())
    for name in direct:
        if name.suffix != ".npz":  # (a zip's member times differ)
            assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "joined" / name).read_bytes(), name
    with np.load(tmp_path / "direct/v.npz") as x, np.load(tmp_path / "joined/v.npz") as y:
        assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f")
                                              for k in x)


@pytest.mark.parametrize("smooth", [False, True])
def test_segments_agree_with_a_whole_run(clip, whole, recorded_boxes, data_dir, tmp_path, smooth):
    """>= 99 % of frames with the same hands, labels and track ids, joints within 1 mm; the joined files are the
    whole run's files, frame for frame; the part files are gone. The hands are the whole run's boxes, read from a
    file: what differs is the tracker's and the smoother's state across segment borders, and the join (MediaPipe's
    own state across borders: test_a_killed_run_resumes_at_the_first_unfinished_segment)."""
    detector = BoxFileDetectors(str(recorded_boxes))
    if smooth:  # the whole run again, smoothed (the fixture's is not)
        reference = tmp_path / "whole"
        run_corpus([str(clip)], reference, Options(data=str(data_dir), smooth=True, segment_frames=0,
                                                   detector=detector))
    else:
        reference = whole
    out = tmp_path / "segmented"
    formats = ("jsonl", "npz") if smooth else FORMATS
    records = run_corpus([str(clip)], out, Options(data=str(data_dir), formats=formats, overlay=not smooth,
                                                   smooth=smooth, segment_frames=SEGMENT, segment_warmup=WARMUP,
                                                   detector=detector))
    (rec,) = records
    assert (rec["status"], rec["frames"], rec["segments"], rec.get("segment")) == ("done", 120, 5, None)
    assert rec["files"] == manifest(reference)[-1]["files"]
    lines = manifest(out)
    # (in the order they ended: two detection threads run two segments at once)
    assert sorted(tuple(r["segment"]) for r in lines[:-1]) == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 120)]
    assert all(r["status"] == "done" and r["frames"] == r["expected_frames"] for r in lines[:-1])
    assert lines[-1] == rec and sum(r["hands"] for r in lines[:-1]) == rec["hands"]
    same, mm = agreement(reference / "clip.npz", out / "clip.npz")
    assert same >= 0.99 and mm <= 1.0, (same, mm)
    with np.load(reference / "clip.npz") as x:
        assert x["present"].sum() > 150 and x["track_id"].max() >= 4  # hands in most frames, tracks born mid-way
    a = [json.loads(line) for line in (reference / "clip.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in b] == list(range(120))
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k != "hands"} == {k: v for k, v in y.items() if k != "hands"}
        for hx, hy in zip(x["hands"], y["hands"], strict=True):
            np.testing.assert_allclose(hy["keypoints_3d"], hx["keypoints_3d"], atol=1e-3)  # 1 mm
    assert not (out / ".hamer-segments").exists() and temp_files(out) == []
    if smooth:
        return
    pose = Pose.read((out / "clip.pose").read_bytes())
    assert pose.body.data.shape[0] == 120
    assert sorted(p.name for p in (out / "clip.openpose").iterdir()) == sorted(
        p.name for p in (reference / "clip.openpose").iterdir()) and len(list((out / "clip.openpose").iterdir())) == 120
    cap = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 120
    cap.release()


def test_a_killed_run_resumes_at_the_first_unfinished_segment(clip, whole, data_dir, tmp_path):
    """MediaPipe finds the hands (its state across segment borders: the warm-up), in a run killed mid-segment and
    resumed: the joined files agree with the whole run's."""
    out = tmp_path / "out"
    # (JSONL and NPZ: the other formats' and the overlay's join is test_segments_agree_with_a_whole_run's)
    cmd = [sys.executable, "-m", "hamer", "run", str(clip), "--data", str(data_dir), "--out", str(out), "--quiet",
           "--detect-workers", "1", "--segment-frames", str(SEGMENT), "--segment-warmup", str(WARMUP), "--formats",
           "jsonl,npz"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # two segments done, the third under way
        wait_for(lambda: (out / MANIFEST).exists() and len(manifest(out)) >= 2, proc, "finished two segments", 300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = manifest(out)
    done = {tuple(r["segment"]) for r in first if r["status"] == "done"}
    assert len(done) >= 2 and all("segment" in r for r in first)  # no video record yet
    assert len(list((out / ".hamer-segments" / "clip").glob("*.npz"))) == len(done)
    in_flight = {tuple(r["segment"]) for r in manifest(out, started=True)} - done
    assert in_flight  # a segment started and not finished: it runs first, alone in a child process
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("running it alone in a child process") == len(in_flight)
    ran = {tuple(r["segment"]) for r in manifest(out)[len(first):] if "segment" in r}
    assert ran and not ran & done and ran | done == set(bounds(120, SEGMENT)), (ran, done)
    (video,) = [r for r in manifest(out) if "segment" not in r]
    assert (video["status"], video["frames"], video["segments"]) == ("done", 120, 5)
    same, mm = agreement(whole / "clip.npz", out / "clip.npz")
    assert same >= 0.99 and mm <= 1.0, (same, mm)
    assert not (out / ".hamer-segments").exists() and temp_files(out) == []
    assert len((out / "clip.jsonl").read_text().splitlines()) == 120


@dataclass(frozen=True)
class FailingBoxes:
    """A detector factory: one fixed hand a frame, and an error at frame ``frame`` while the file ``flag`` exists."""

    flag: str
    frame: int

    def __call__(self, mode: str) -> FailingBoxes:
        return self

    def detect(self, img_bgr, timestamp_ms=None, frame: FrameRef | None = None) -> list[HandDetection]:
        if frame is not None and frame.index == self.frame and Path(self.flag).exists():
            raise RuntimeError(f"poisoned frame {frame.index}")
        box = np.array([100, 60, 180, 140], dtype=np.float32) + (0 if frame is None else frame.index % 7)
        return [HandDetection("Right", 0.9, box, None, "test")]

    def close(self) -> None:
        pass

    def __enter__(self) -> FailingBoxes:
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_a_failed_segment_fails_its_video_and_resume_runs_only_it(clip, data_dir, tmp_path):
    flag = tmp_path / "poison"
    flag.touch()
    out = tmp_path / "out"
    options = Options(data=str(data_dir), segment_frames=SEGMENT, segment_warmup=10,  # (65..74 before [75, 100))
                      detector=FailingBoxes(str(flag), 60))
    (rec,) = run_corpus([str(clip)], out, options)
    assert rec["status"] == "failed" and rec["files"] == [] and not (out / "clip.jsonl").exists()
    assert rec["error"].startswith("segment [50, 75) failed: poisoned frame 60")
    assert len(list((out / ".hamer-segments" / "clip").glob("*.npz"))) == 4  # the others' work is kept
    assert run_corpus([str(clip)], out, options) == []  # failed earlier: skipped without --resume
    flag.unlink()
    before = len(manifest(out))
    (rec,) = run_corpus([str(clip)], out, options, resume=True)
    assert (rec["status"], rec["frames"]) == ("done", 120)
    assert [tuple(r["segment"]) for r in manifest(out)[before:-1]] == [(50, 75)]
    with np.load(out / "clip.npz") as npz:
        assert npz["present"][:, 0].all() and (npz["track_id"][:, 0] == 0).all()  # one track, joined across
        np.testing.assert_allclose(npz["box"][:, 0, 0], 100 + np.arange(120) % 7)
    assert not (out / ".hamer-segments").exists()
    assert run_corpus([str(clip)], out, options, resume=True) == []  # done
    with pytest.raises(OverwriteError, match="--label-hold"):  # a segmented video's results, as any
        run_corpus([str(clip)], out, Options(**{**vars(options), "label_hold": 2}))


def test_a_kill_between_the_join_and_the_videos_record_joins_again(clip, data_dir, tmp_path):
    """The video's files that a join wrote before its record are its own: the next run replaces them, no refusal."""
    out = tmp_path / "out"
    options = Options(data=str(data_dir), segment_frames=SEGMENT, detector=FailingBoxes(str(tmp_path / "no"), -1))
    (first,) = run_corpus([str(clip)], out, options)
    lines = (out / MANIFEST).read_text().splitlines()
    (out / MANIFEST).write_text("\n".join(lines[:-1]) + "\n")  # the video's record never written
    (again,) = run_corpus([str(clip)], out, options)
    assert (again["status"], again["frames"], again["files"]) == ("done", 120, first["files"])
    assert len([r for r in manifest(out) if "segment" not in r]) == 1


def test_segments_through_ray_workers(clip, whole, recorded_boxes, data_dir, tmp_path):
    """The segments of a video spread over Ray's workers, each reading the whole run's boxes from a file."""
    ray = pytest.importorskip("ray")
    from hamer.engines.ray import LocalRay

    # the Ray of tests/test_ray.py when the session started one, else one of its own
    local = None if ray.is_initialized() else LocalRay(num_cpus=2, temp_dir=str(short_temp_dir()))
    try:
        out = tmp_path / "out"
        (rec,) = run_corpus([str(clip)], out, Options(data=str(data_dir), formats=FORMATS, overlay=True,
                                                      segment_frames=SEGMENT, segment_warmup=WARMUP, engine="ray",
                                                      workers=2, detect_workers=1,
                                                      detector=BoxFileDetectors(str(recorded_boxes))))
    finally:
        if local is not None:
            local.shutdown()
    assert (rec["status"], rec["frames"], rec["segments"]) == ("done", 120, 5)
    segments = [r for r in manifest(out) if "segment" in r]
    assert sorted(tuple(r["segment"]) for r in segments) == bounds(120, SEGMENT)
    assert all(r["node"]["ray_node_id"] for r in segments)
    same, mm = agreement(whole / "clip.npz", out / "clip.npz")
    assert same >= 0.99 and mm <= 1.0, (same, mm)
    assert sorted(p.name for p in out.iterdir()) == sorted([*rec["files"], MANIFEST])
