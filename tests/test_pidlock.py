"""Unit tests of the lock file that names its holder (hamer.pidlock): a real second process holding the lock (flock
taken by hand, its content written by hand), real dead pids, a lock file replaced under its holder, links, and the
fallbacks of file systems without flock and systems without fcntl.

The fallbacks cannot be met for real on this machine (every local file system here has flock, and the platform has
fcntl): those tests replace the module's ``fcntl`` with one whose ``flock`` fails as such a file system's does
(ENOLCK), or with None; everything else (the files, the processes, the pids) is real."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from processes import Holder, as_another_user, dead_pid, open_fds

from hamer import pidlock
from hamer.pidlock import LockBusy, PidLock, holder_alive, pid_alive, read_holder

SINCE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")


class NoFlock:
    """The ``fcntl`` of a file system without flock: ``flock`` fails with ENOLCK (as NFS without a lock manager)."""

    LOCK_EX = fcntl.LOCK_EX
    LOCK_NB = fcntl.LOCK_NB

    @staticmethod
    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


# ---------------------------------------------------------------------------------------------------- pids

def test_pid_alive_of_a_live_a_dead_and_a_malformed_pid():
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as child:
        assert pid_alive(child.pid) is True
        child.stdin.close()
    assert child.returncode == 0  # asked, not signalled: it ended as it would have
    assert pid_alive(os.getpid()) is True
    assert pid_alive(dead_pid()) is False
    assert pid_alive(2**80) is True  # no such pid can be told dead: OverflowError means "cannot tell"
    assert pid_alive("12") is True  # not a number os.kill takes (TypeError): cannot tell


def test_a_process_of_another_user_is_alive_though_it_cannot_be_signalled():
    assert os.stat("/proc/1").st_uid == 0  # pid 1 is root's: an ordinary user's signal to it is refused (EPERM)
    assert as_another_user(lambda: pid_alive(1)) == ("returned", True)
    pid = dead_pid()
    assert as_another_user(lambda: pid_alive(pid)) == ("returned", False)


def test_holder_alive_on_this_host_and_another():
    here = socket.gethostname()
    assert holder_alive({"pid": os.getpid(), "host": here}) is True
    assert holder_alive({"pid": str(os.getpid()), "host": here}) is True  # a pid written as text is read
    assert holder_alive({"pid": dead_pid(), "host": here}) is False
    assert holder_alive({"pid": str(dead_pid()), "host": here}) is False
    assert holder_alive({"pid": dead_pid(), "host": here + "-elsewhere"}) is True  # another host: cannot tell
    assert holder_alive({"pid": dead_pid()}) is True  # no host: not this one
    for pid in ("abc", None, [1], 1e300 * 10):  # not a pid: cannot tell (inf: OverflowError)
        assert holder_alive({"pid": pid, "host": here}) is True


def test_a_holder_without_a_pid_on_this_host_is_alive():
    assert holder_alive({"host": socket.gethostname()}) is True  # the lock is not taken from an unknown holder


# ---------------------------------------------------------------------------------------------------- holding

def test_acquire_writes_this_process_and_release_removes_the_file(tmp_path):
    path = tmp_path / "lock"
    lock = PidLock(path)
    previous = os.umask(0o022)
    try:
        assert lock.acquire() == {}
    finally:
        os.umask(previous)
    content = json.loads(path.read_text())
    assert set(content) == {"pid", "host", "since"}
    assert content["pid"] == os.getpid() and content["host"] == socket.gethostname()
    assert SINCE.match(content["since"]), content["since"]
    assert path.stat().st_mode & 0o777 == 0o644
    lock.release()
    assert not path.exists()
    lock.release()  # a second release does nothing
    assert not path.exists()


def test_release_lets_another_process_take_it(tmp_path):
    path = tmp_path / "lock"
    lock = PidLock(path)
    lock.acquire()
    probe = [sys.executable, "-c", f"import fcntl, os; fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"]
    assert subprocess.run(probe, capture_output=True).returncode != 0  # held: a second process cannot lock it
    fds = open_fds(tmp_path)
    lock.release()
    assert open_fds(tmp_path) == fds - 1  # its file is closed
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_release_when_never_held_touches_nothing(tmp_path):
    path = tmp_path / "lock"
    path.write_text("someone's")
    PidLock(path).release()
    assert path.read_text() == "someone's"


def test_a_dead_holders_longer_content_is_replaced_whole_and_returned(tmp_path):
    path = tmp_path / "lock"
    pid = dead_pid()
    before = {"pid": pid, "host": socket.gethostname(), "since": "2000-01-01T00:00:00+0000", "note": "x" * 500}
    path.write_text(json.dumps(before))
    lock = PidLock(path)
    try:
        assert lock.acquire() == before
        assert json.loads(path.read_text())["pid"] == os.getpid()  # no tail of the longer content left
    finally:
        lock.release()


def test_a_live_process_holding_it_is_refused_with_what_its_file_says(tmp_path):
    path = tmp_path / "lock"
    with Holder(path) as holder:
        fds = open_fds(tmp_path)
        with pytest.raises(LockBusy) as busy:
            PidLock(path).acquire()
        assert busy.value.holder == {"pid": holder.proc.pid, "host": socket.gethostname(), "since": "then"}
        assert str(busy.value) == str(busy.value.holder)  # uncaught, it still names the holder
        assert open_fds(tmp_path) == fds  # the refused attempt closed its file
        assert json.loads(path.read_text())["pid"] == holder.proc.pid  # and wrote nothing
    lock = PidLock(path)  # the holder ended: the kernel let its lock go
    try:
        assert lock.acquire()["pid"] == holder.proc.pid
    finally:
        lock.release()


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '"text"'])
def test_a_holder_that_wrote_nothing_readable_is_refused_as_unknown(tmp_path, content):
    path = tmp_path / "lock"
    with Holder(path, content), pytest.raises(LockBusy) as busy:
        PidLock(path).acquire()
    assert busy.value.holder == {}


def test_a_lock_file_that_is_a_link_is_never_opened(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(OSError) as refused:
        PidLock(tmp_path / "lock").acquire()
    assert refused.value.errno == errno.ELOOP
    assert target.read_text() == "keep"


def test_read_holder_reads_the_file_from_its_start(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": 12, "host": "h"}))
    fd = os.open(path, os.O_RDWR)
    try:
        os.lseek(fd, 0, os.SEEK_END)  # wherever the file offset is
        assert read_holder(fd) == {"pid": 12, "host": "h"}
    finally:
        os.close(fd)
    assert read_holder(-1) == {}  # unreadable: nothing said


@pytest.mark.parametrize("size", [4096, 4097])
def test_read_holder_reads_4_kib_at_most(tmp_path, size):
    path = tmp_path / "lock"
    start = '{"pid": 12, "note": "'
    path.write_text(start + "x" * (size - len(start) - 2) + '"}')
    assert path.stat().st_size == size
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_holder(fd).get("pid") == (12 if size == 4096 else None)  # a longer file is cut, not read whole
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- races

class ReplacedOnFlock:
    """The real ``fcntl``, except that the first ``flock`` first does what the lock's earlier holder does when
    it ends between our open and our flock: removes the file (and, with ``recreate``, a third process creates a new
    one at the path). The interleaving is set; the files and the locks are real."""

    LOCK_EX = fcntl.LOCK_EX
    LOCK_NB = fcntl.LOCK_NB

    def __init__(self, path: Path, recreate: bool) -> None:
        self.path, self.recreate, self.calls = path, recreate, 0

    def flock(self, fd: int, operation: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.path.unlink()
            if self.recreate:
                self.path.write_text("")
        fcntl.flock(fd, operation)


@pytest.mark.parametrize("recreate", [False, True])
def test_a_lock_file_replaced_as_it_is_locked_is_opened_again(tmp_path, monkeypatch, recreate):
    path = tmp_path / "lock"
    path.write_text("")
    replaced = ReplacedOnFlock(path, recreate)
    monkeypatch.setattr(pidlock, "fcntl", replaced)
    fds = open_fds(tmp_path)
    lock = PidLock(path)
    lock.acquire()
    try:
        assert replaced.calls == 2  # locked again, on the file now at the path
        assert open_fds(tmp_path) == fds + 1  # the first file was closed
        assert json.loads(path.read_text())["pid"] == os.getpid()
        probe = [sys.executable, "-c", f"import fcntl, os; fd = os.open({str(path)!r}, os.O_RDWR); "
                 "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"]
        assert subprocess.run(probe, capture_output=True).returncode != 0  # the file at the path is the one held
    finally:
        lock.release()


class LinkedOnFlock(ReplacedOnFlock):
    """As :class:`ReplacedOnFlock`, but the file at the path becomes a symbolic link to the very file opened (moved
    aside): the inode met through the link is the one locked, yet the path is a link."""

    def flock(self, fd: int, operation: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.path.rename(self.path.with_name("moved"))
            self.path.symlink_to(self.path.with_name("moved"))
        fcntl.flock(fd, operation)


def test_a_lock_file_replaced_by_a_link_as_it_is_locked_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "lock"
    path.write_text("")
    monkeypatch.setattr(pidlock, "fcntl", LinkedOnFlock(path, False))
    fds = open_fds(tmp_path)
    with pytest.raises(OSError) as refused:
        PidLock(path).acquire()
    assert refused.value.errno == errno.ELOOP  # opened again without following the link: refused
    assert (tmp_path / "moved").read_text() == ""  # nothing written through the link
    assert open_fds(tmp_path) == fds


# ---------------------------------------------------------------------------------------------------- fallbacks

def test_without_flock_a_live_holder_on_this_host_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(pidlock, "fcntl", NoFlock)
    path = tmp_path / "lock"
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as child:
        holder = {"pid": child.pid, "host": socket.gethostname(), "since": "then"}
        path.write_text(json.dumps(holder))
        fds = open_fds(tmp_path)
        with pytest.raises(LockBusy) as busy:
            PidLock(path).acquire()
        assert busy.value.holder == holder
        assert open_fds(tmp_path) == fds
        child.stdin.close()


def test_without_flock_a_holder_on_another_host_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(pidlock, "fcntl", NoFlock)
    path = tmp_path / "lock"
    holder = {"pid": dead_pid(), "host": socket.gethostname() + "-elsewhere", "since": "then"}
    path.write_text(json.dumps(holder))
    with pytest.raises(LockBusy) as busy:
        PidLock(path).acquire()
    assert busy.value.holder == holder


@pytest.mark.parametrize("dead", [True, False])
def test_without_flock_a_dead_or_unnamed_holder_is_taken_over_and_said(tmp_path, monkeypatch, caplog, dead):
    monkeypatch.setattr(pidlock, "fcntl", NoFlock)
    path = tmp_path / "lock"
    holder = {"pid": dead_pid(), "host": socket.gethostname(), "since": "then"} if dead else {}
    path.write_text(json.dumps(holder) if dead else "")
    lock = PidLock(path)
    with caplog.at_level(logging.WARNING, logger="hamer.pidlock"):
        assert lock.acquire() == holder
    try:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert caplog.messages == [f"{path}: no flock on this file system ({os.strerror(errno.ENOLCK)}); the lock "
                                   "relies on the pid it names"]
        with pytest.raises(LockBusy) as busy:  # and now this live process is the holder a second attempt meets
            PidLock(path).acquire()
        assert busy.value.holder["pid"] == os.getpid()
    finally:
        lock.release()
    assert not path.exists()


def test_without_fcntl_no_lock_is_held_and_that_is_said(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pidlock, "fcntl", None)
    path = tmp_path / "lock"
    first, second = PidLock(path), PidLock(path)
    with caplog.at_level(logging.WARNING, logger="hamer.pidlock"):
        assert first.acquire() == {}
        assert second.acquire()["pid"] == os.getpid()  # nothing refuses it
    assert caplog.messages == [f"no file locking on this system: run one process on {tmp_path} at a time"] * 2
    assert json.loads(path.read_text())["pid"] == os.getpid()
    first.release()
    second.release()
    assert not path.exists()
