"""The Ray engine on a local Ray with 2 CPUs (one per pytest session): the local engine's outputs (and progress
that adds up to the frames written), a failing video recorded while the rest finish, a worker running two videos at
once killed mid-way, whose videos are still written once, and a video whose worker dies each time it runs it,
recorded failed after three runs while the other video is done."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ray_helpers import short_temp_dir

from hamer.corpus import TEMP_FILE, Options, run_corpus
from hamer.hamer_module import HAMER

from conftest import SHARED_IMAGES as IMAGES
from videos import manifest, pan_zoom, temp_files, write_video

ray = pytest.importorskip("ray")
# (one xdist worker runs every Ray test: tests/conftest.py, pytest_xdist_make_scheduler)
pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")


class Recorder:
    """A progress listener (hamer.corpus.Progress) that keeps what it is told."""

    def __init__(self) -> None:
        self.started: tuple | None = None
        self.counts: list[int] = []
        self.units: list[dict] = []

    def start(self, units: int, frames: int | None) -> None:
        self.started = (units, frames)

    def frames(self, count: int) -> None:
        self.counts.append(count)

    def unit(self, record: dict) -> None:
        self.units.append(record)


@pytest.fixture(scope="session")
def local_ray():
    from hamer.engines.ray import LocalRay

    local = LocalRay(num_cpus=2, temp_dir=str(short_temp_dir()))
    yield
    local.shutdown()


def test_ray_equals_the_local_engine_and_records_a_failure(local_ray, data_dir, tmp_path):
    clips = [write_video(tmp_path / "a.mp4", pan_zoom("test4.jpg", 5)),
             write_video(tmp_path / "b.mp4", pan_zoom("test5.jpeg", 4))]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clips[0].read_bytes()[:2000])
    inputs = [str(clips[0]), str(corrupt), str(clips[1])]
    options = Options(data=str(data_dir), smooth=True)
    progress = Recorder()
    with HAMER(data_dir=data_dir) as hamer:  # the checkpoint's export in the session's ONNX cache first: the runs
        hamer.load()  # below load it at once (none exports it while another reads it)
    with ThreadPoolExecutor(1) as pool:  # the Ray run, and meanwhile the local one
        ray_run = pool.submit(run_corpus, inputs, tmp_path / "ray",
                              Options(**{**vars(options), "engine": "ray", "workers": 2}), progress=progress)
        local = run_corpus(inputs, tmp_path / "local", options)
        remote = ray_run.result()
    assert sorted((r["input"], r["status"], r["frames"], r["hands"], r["files"]) for r in remote) == sorted(
        (r["input"], r["status"], r["frames"], r["hands"], r["files"]) for r in local)
    # the bookkeeping: the frames reported add up to the frames recorded and to the lines written
    assert progress.started == (3, None)  # the corrupt video announces no frame count
    assert sum(progress.counts) == sum(r["frames"] for r in remote) == 9 == sum(
        len((tmp_path / "ray" / f"{name}.jsonl").read_text().splitlines()) for name in ("a", "b"))
    assert sorted(r["input"] for r in progress.units) == sorted(r["input"] for r in remote)
    assert all(r["node"] == {"host": socket.gethostname()} for r in local)
    node_id = ray.get_runtime_context().get_node_id()
    assert all(r["node"]["ray_node_id"] == node_id and r["node"]["host"] == socket.gethostname() for r in remote)
    assert {Path(r["input"]).name: r["status"] for r in manifest(tmp_path / "ray")} == {
        "a.mp4": "done", "b.mp4": "done", "corrupt.mp4": "failed"}
    for name in ("a", "b"):
        with np.load(tmp_path / "local" / f"{name}.npz") as x, np.load(tmp_path / "ray" / f"{name}.npz") as y:
            assert x["present"].any()
            np.testing.assert_array_equal(x["present"], y["present"])
            np.testing.assert_array_equal(x["track_id"], y["track_id"])
            np.testing.assert_allclose(y["keypoints_3d"], x["keypoints_3d"], atol=1e-7)  # 1e-4 mm
            np.testing.assert_allclose(y["cam_t"], x["cam_t"], atol=1e-7)


def test_a_worker_runs_its_units_at_once_and_a_kill_mid_video_retries_them_written_once(local_ray, data_dir,
                                                                                         tmp_path):
    clips = [write_video(tmp_path / "long.mp4", pan_zoom("test4.jpg", 20)),
             write_video(tmp_path / "other.mp4", pan_zoom("test5.jpeg", 20))]
    out = tmp_path / "out"
    result: list = []
    run = threading.Thread(target=lambda: result.append(run_corpus([str(c) for c in clips], out, Options(
        data=str(data_dir), engine="ray", workers=1, detect_workers=2, overlay=True))))
    run.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and run.is_alive():
        # ".hamer-tmp-<pid>-<n>.jsonl": both videos mid-way in the one worker, then it dies
        writing = [p for p in (temp_files(out) if out.is_dir() else []) if p.name.endswith(".jsonl")]
        pids = {int(TEMP_FILE.match(p.name).group(1)) for p in writing}
        try:
            if len(writing) == 2 and len(pids) == 1 and all(p.stat().st_size > 0 for p in writing):
                killed = pids.pop()
                os.kill(killed, signal.SIGKILL)
        except FileNotFoundError:  # a unit finished between the listing and the check
            pass
        time.sleep(0.005)
    run.join(timeout=180)
    assert killed is not None and killed != os.getpid(), "the worker was never caught with both videos mid-way"
    (records,) = result
    assert sorted((Path(r["input"]).name, r["status"], r["frames"]) for r in records) == [
        ("long.mp4", "done", 20), ("other.mp4", "done", 20)]
    assert sorted((r["input"], r["status"]) for r in manifest(out)) == [(str(c), "done") for c in clips]  # once
    for name in ("long", "other"):
        assert len((out / f"{name}.jsonl").read_text().splitlines()) == 20
    assert temp_files(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["long.jsonl", "long.npz", "long.overlay.mp4", "manifest.jsonl",
                                                     "other.jsonl", "other.npz", "other.overlay.mp4"]


def test_a_missing_model_fails_on_the_driver_before_any_worker_starts(local_ray, tmp_path):
    from hamer.corpus import ModelError

    clip = write_video(tmp_path / "a.mp4", pan_zoom("test4.jpg", 2))
    with pytest.raises(ModelError, match="hamer.ckpt does not exist"):
        run_corpus([str(clip)], tmp_path / "out", Options(data=str(tmp_path / "no_data"), engine="ray"))
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_workers_that_cannot_load_the_network_fail_the_run_with_a_model_error(local_ray, data_dir, tmp_path):
    from hamer.corpus import ModelError

    clip = write_video(tmp_path / "a.mp4", pan_zoom("test4.jpg", 2))
    with pytest.raises(ModelError, match="banana"):
        run_corpus([str(clip)], tmp_path / "out", Options(data=str(data_dir), engine="ray", device="banana"))
    with pytest.raises(ModelError, match="no GPU"):  # rather than waiting for one forever
        run_corpus([str(clip)], tmp_path / "out", Options(data=str(data_dir), engine="ray", device="cuda"))


def test_a_unit_whose_worker_dies_each_time_fails_alone_after_three_runs(local_ray, data_dir, tmp_path):
    poison = write_video(tmp_path / "poison.mp4", pan_zoom("test4.jpg", 40))
    fine = write_video(tmp_path / "fine.mp4", pan_zoom("test5.jpeg", 3))
    out = tmp_path / "out"
    result: list = []
    # both videos in one call of the one worker: the first death sends them back one by one
    run = threading.Thread(target=lambda: result.append(run_corpus([str(poison), str(fine)], out, Options(
        data=str(data_dir), engine="ray", workers=1, detect_workers=2))))
    run.start()
    killed: set[int] = set()
    deadline = time.monotonic() + 300
    while run.is_alive() and time.monotonic() < deadline:
        for path in temp_files(out) if out.is_dir() else []:  # a worker writing poison.mp4's frames dies
            try:
                line, whole, _ = path.read_text().partition("\n") if path.suffix == ".jsonl" else ("", "", "")
            except FileNotFoundError:
                continue
            pid = int(TEMP_FILE.match(path.name).group(1))
            if whole and Path(json.loads(line)["source"]).name == "poison.mp4" and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.005)
    run.join(timeout=60)
    assert len(killed) == 3  # and not a fourth time
    (records,) = result
    assert sorted((Path(r["input"]).name, r["status"], r["frames"], r["error"]) for r in records) == [
        ("fine.mp4", "done", 3, None), ("poison.mp4", "failed", 0, "its Ray worker died 3 times running it")]
    assert [(Path(r["input"]).name, r["status"]) for r in manifest(out)] == [
        (Path(r["input"]).name, r["status"]) for r in records]
    assert sorted(p.name for p in out.iterdir()) == ["fine.jsonl", "fine.npz", "manifest.jsonl"]
