"""Helpers of the Ray tests: `hamer run` in a subprocess whose whole process tree (the Ray it starts included) is
found again by a mark in its environment, a Ray cluster started by a test, and stderr without progress bars."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_MARK = "HAMER_TEST_MARK"
# tqdm's bar lines ("  0%|   | 0/40 [00:00<?, ?frame/s]", "0frame [00:00, ?frame/s]") and the blank lines around them
BAR_LINE = re.compile(r"frame/s|s/frame|^\s*$")


def hamer_env(onnx_cache: Path, mark: str | None = None, ray_tmp: Path | None = None) -> dict[str, str]:
    """The environment of a `hamer` subprocess: this worktree first, the session's ONNX cache, a mark that every
    process it starts inherits (Ray's too), Ray's temporary folder (``RAY_TMPDIR``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "HAMER_ONNX_CACHE": str(onnx_cache)}
    if mark is not None:
        env[TEST_MARK] = mark
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def hamer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hamer", "run", *args]


def marked_processes(mark: str) -> dict[int, str]:
    """The live processes (pid -> name) whose environment carries ``TEST_MARK=mark``: a test's process tree,
    whoever reparented them, and nothing of the other Ray runs on this machine."""
    needle = f"{TEST_MARK}={mark}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            if stat[stat.rindex(")") + 2] == "Z":  # a zombie: dead, waiting for its parent
                continue
            with open(f"/proc/{name}/comm") as f:
                found[int(name)] = f.read().strip()
        except OSError:
            continue
    return found


def wait_until_gone(mark: str, timeout_s: float) -> dict[int, str]:
    """The marked processes still alive after up to ``timeout_s`` (empty as soon as none is)."""
    deadline = time.monotonic() + timeout_s
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_marked(mark: str) -> None:
    """SIGKILL what a test started and left (so that a failing test leaves nothing behind)."""
    for pid in marked_processes(mark):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def new_mark() -> str:
    return uuid.uuid4().hex


_made: list[Path] = []


def short_temp_dir() -> Path:
    """A fresh folder for Ray's sessions, short enough for its Unix socket paths (107 bytes); removed at the end of
    the test session (:func:`remove_short_temp_dirs`)."""
    _made.append(Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp")))
    return _made[-1]


def remove_short_temp_dirs() -> None:
    """Remove the folders :func:`short_temp_dir` made in this process (their Rays shut down by then)."""
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)


def stderr_lines(text: str) -> list[str]:
    """The lines of a run's stderr, progress-bar lines (carriage returns included) left out."""
    return [line for line in re.split(r"[\r\n]", text) if not BAR_LINE.search(line)]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(hamer_cmd(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_clis(*args: list[str], env: dict[str, str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """:func:`run_cli` of each ``args``, all at once (one run's start-up overlaps another's work)."""
    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(lambda a: run_cli(a, env, timeout), args))
