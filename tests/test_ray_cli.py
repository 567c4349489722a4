"""`hamer run --engine ray` with the local Ray it starts, run as a user runs it (a subprocess): its stderr holds what
the local engine's does and nothing else, killing it mid-run (SIGKILL, SIGTERM) leaves no process of its Ray, and a
data folder without a checkpoint fails on the driver before Ray starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from ray_helpers import (
    REPO,
    hamer_cmd,
    hamer_env,
    kill_marked,
    marked_processes,
    new_mark,
    run_cli,
    run_clis,
    short_temp_dir,
    stderr_lines,
    wait_until_gone,
)

from hamer.hamer_module import HAMER

from conftest import SHARED_IMAGES as IMAGES
from videos import pan_zoom, temp_files, write_video

pytest.importorskip("ray")
# (one xdist worker runs every Ray test: tests/conftest.py, pytest_xdist_make_scheduler)
pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {"a": write_video(folder / "a.mp4", pan_zoom("test4.jpg", 6)),
            "b": write_video(folder / "b.mp4", pan_zoom("test5.jpeg", 5)),
            "long": write_video(folder / "long.mp4", pan_zoom("test4.jpg", 300))}


def test_its_stderr_holds_what_the_local_engine_prints_and_nothing_else(data_dir, onnx_cache, clips, tmp_path):
    # (Ray 2.60 printed a token-authentication warning, a core-worker error line about Ray Data's actors, and
    # Ray Data's notice that progress bars are disabled)
    inputs = [str(clips["a"]), str(clips["b"])]
    mark = new_mark()
    env = hamer_env(onnx_cache, mark, short_temp_dir())
    # the session's ONNX cache (HAMER_ONNX_CACHE) gets this checkpoint's export, as from a user's earlier run: a
    # first run announces its one-time export on stderr
    with HAMER(data_dir=data_dir) as hamer:
        hamer.load()
    try:  # (both at once)
        local, remote = run_clis([*inputs, "--data", str(data_dir), "--out", str(tmp_path / "local")],
                                 [*inputs, "--data", str(data_dir), "--out", str(tmp_path / "ray"), "--engine", "ray",
                                  "--workers", "2"], env=env)
    finally:
        kill_marked(mark)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert stderr_lines(remote.stderr) == stderr_lines(local.stderr), remote.stderr
    assert sorted(remote.stdout.splitlines()) == sorted(local.stdout.splitlines())  # the same units, any order
    assert len(local.stdout.splitlines()) == 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_driver_mid_run_leaves_no_process_of_its_ray(sig, data_dir, onnx_cache, clips, tmp_path):
    mark = new_mark()
    out = tmp_path / "out"
    proc = subprocess.Popen(hamer_cmd(str(clips["long"]), "--data", str(data_dir), "--out", str(out), "--engine",
                                      "ray", "--quiet"), cwd=REPO, env=hamer_env(onnx_cache, mark, short_temp_dir()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine slows the start-up
        while proc.poll() is None and time.monotonic() < deadline and not (out.is_dir() and temp_files(out)):
            time.sleep(0.02)  # a worker is writing the video's files
        names = set(marked_processes(mark).values())
        assert proc.poll() is None, "the run ended before a worker started writing"
        assert {"raylet", "gcs_server"} <= names and any(n.startswith("ray::") for n in names), names
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == (128 + sig if sig == signal.SIGTERM else -sig)
        assert wait_until_gone(mark, timeout_s=120) == {}  # the driver's Ray, its agents and workers
    finally:
        proc.kill()
        kill_marked(mark)


def test_a_data_folder_without_checkpoint_fails_on_the_driver_before_ray_starts(onnx_cache, clips, tmp_path):
    ray_tmp = short_temp_dir() / "ray"
    result = run_cli([str(clips["a"]), "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "out"),
                      "--engine", "ray"], hamer_env(onnx_cache, ray_tmp=ray_tmp))
    assert result.returncode == 1
    assert stderr_lines(result.stderr) == [
        f"error: cannot set up the model: {tmp_path / 'no_data' / 'hamer_ckpts/checkpoints/hamer.ckpt'} does not "
        "exist (the workers load it from the same path)"]
    assert not ray_tmp.exists()  # no Ray was started, hence no worker started and failed, again and again
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_ray_process_that_retitles_itself_keeps_the_watchdogs_mark():
    """Ray's agents set their process title (``ray._raylet.setproctitle``, py-setproctitle's code, which this child
    calls too), which a title longer than the command line writes over
    ``/proc/PID/environ``, the watchdog's mark with it: a SIGKILLed driver's agents then outlived it by a minute
    (seen as this file's SIGKILL test taking 70 s, one run in three). The environment of a local Ray keeps it."""
    from hamer.engines import ray_watchdog as watchdog

    token = new_mark()
    # a small environment, which a long title overwrites whole (at the end of a larger one the mark can survive)
    env = {"PATH": os.environ.get("PATH", ""), **watchdog.environment(token)}
    code = ("import ray._raylet, sys; ray._raylet.setproctitle('ray::Agent ' + 'x' * 4000); print('titled', "
            "flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "titled"
        assert child.pid in watchdog.marked(token)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
