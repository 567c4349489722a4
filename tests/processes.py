"""Processes for the tests: a pid that has ended, a call made as an unprivileged user, a second process holding a
lock file, this process's open files, waiting on a running process for a condition."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def shared_temp_dir() -> Iterator[Path]:
    """A new folder every user can enter and read, for :func:`as_another_user` (pytest's own are this user's
    alone); removed after, whatever modes the test gave what is in it."""
    path = Path(tempfile.mkdtemp(prefix="hamer-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o755)
        shutil.rmtree(path)


def as_another_user(call: Callable[[], Any]) -> tuple[str, Any]:
    """``call()`` in a forked child that is not root (as user ``nobody`` when this process is root, else as this
    user, who already is not): ``("returned", value)`` or ``("raised", exception)``. File permissions then apply as
    they do to an ordinary user (root passes every permission check): a file or folder of mode 0o000 / 0o555 is
    not readable / writable by it. The child's modules are this process's, as imported. (A mutation tool records
    which tests reach a function in this process only: a test calls the code under test here too.)"""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                outcome: tuple[str, Any] = ("returned", call())
            except BaseException as exc:  # noqa: B036 - the parent asserts on it
                outcome = ("raised", exc)
            with os.fdopen(write, "wb") as pipe:
                pickle.dump(outcome, pipe)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)  # our own child's pickle, of values and exceptions of this test


def open_fds(folder: Path) -> int:
    """How many of this process's file descriptors are open on files in ``folder`` (removed ones too): not all of
    them, which other threads change meanwhile (a Ray session's, in the pytest worker that ran the Ray tests)."""
    prefix = f"{folder}{os.sep}"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except OSError:  # closed meanwhile
            continue
    return count


class Holder:
    """A second process holding ``path``'s flock the way a lock holder does, written by hand: it opens the file,
    takes the lock, writes ``content`` (default: its pid and host), says so, and holds until closed."""

    def __init__(self, path: Path, content: str | None = None) -> None:
        code = textwrap.dedent(f"""
            import fcntl, json, os, socket, sys
            fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            content = {content!r}
            if content is None:
                content = json.dumps({{"pid": os.getpid(), "host": socket.gethostname(), "since": "then"}})
            os.ftruncate(fd, 0)
            os.write(fd, content.encode())
            print("held", flush=True)
            sys.stdin.read()
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wait_for(condition: Callable[[], Any], proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Poll ``condition`` until it holds; the test fails, saying it ``never {what}``, if ``proc`` ends first or
    ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never {what} (exit status {proc.poll()})")
        time.sleep(0.02)
