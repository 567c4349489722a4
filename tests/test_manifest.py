"""Unit tests of an output folder's bookkeeping (hamer.manifest) on folders built by hand: the manifest's reading of
torn and malformed lines, its appends, the folder's lock, and the removal of dead runs' temporary files."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket

import pytest
from processes import Holder, as_another_user, dead_pid, shared_temp_dir

from hamer.manifest import (
    LOCK,
    MANIFEST,
    FolderBusy,
    FolderLock,
    Manifest,
    ManifestError,
    RunError,
    clean_temp_files,
    this_run,
)

# ---------------------------------------------------------------------------------------------------- reading

def test_no_manifest_reads_as_no_record(tmp_path):
    assert Manifest(tmp_path).load() == {}


def test_the_latest_line_of_each_input_decides_and_bad_lines_are_skipped_by_number(tmp_path, caplog):
    lines = [
        json.dumps({"input": "/a", "status": "started"}),
        "not json at all",
        json.dumps({"input": "/b", "status": "done"}),
        json.dumps(["a", "list"]),                # JSON, but not a record
        json.dumps({"status": "done"}),           # no input
        json.dumps("a string"),
        json.dumps({"input": "/a", "status": "failed", "error": "x"}),
        '{"input": "/b", "status": "fail',        # a torn last line: a run killed while writing it
    ]
    (tmp_path / MANIFEST).write_text("\n".join(lines), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"):
        records = Manifest(tmp_path).load()
    assert records == {"/a": {"input": "/a", "status": "failed", "error": "x"}, "/b": {"input": "/b", "status": "done"}}
    warned = sorted(int(r.getMessage().split(" line ")[1].split()[0]) for r in caplog.records)
    assert warned == [2, 4, 5, 6, 8]
    assert all(str(tmp_path / MANIFEST) in r.getMessage() for r in caplog.records)


def test_a_manifest_that_is_a_link_is_refused(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"input": "/a", "status": "done"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).symlink_to(outside)
    with pytest.raises(RunError, match="symbolic link") as refused:
        Manifest(out).load()
    assert str(refused.value) == (f"{out / MANIFEST} is a symbolic link (to {outside}): the manifest is not written "
                                  "through links; remove it or choose another --out")


# ---------------------------------------------------------------------------------------------------- writing

def test_each_append_is_on_disk_as_one_line_and_a_torn_last_line_is_ended_first(tmp_path):
    path = tmp_path / MANIFEST
    path.write_text(json.dumps({"input": "/a", "status": "done"}) + "\n" + '{"input": "/b", "sta')
    manifest = Manifest(tmp_path)
    try:
        manifest.append({"input": "/c", "status": "started"})
        assert path.read_text().splitlines()[-2:] == ['{"input": "/b", "sta', '{"input": "/c", "status": "started"}']
        manifest.append({"input": "/c", "status": "done"})
        assert path.read_text().endswith('{"input": "/c", "status": "done"}\n')
    finally:
        manifest.close()
    assert Manifest(tmp_path).load()["/c"]["status"] == "done"
    assert len(path.read_text().splitlines()) == 4


def test_appending_to_a_new_manifest_needs_no_newline_first(tmp_path):
    manifest = Manifest(tmp_path)
    try:
        manifest.append({"input": "/a", "status": "done"})
    finally:
        manifest.close()
    assert (tmp_path / MANIFEST).read_text() == '{"input": "/a", "status": "done"}\n'


def test_an_append_that_cannot_be_written_is_a_manifest_error_naming_the_file(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).symlink_to(outside)  # put there after the run read the folder: never followed
    manifest = Manifest(out)
    with pytest.raises(ManifestError) as refused:
        manifest.append({"input": "/a", "status": "done"})
    assert str(refused.value) == (f"cannot write {out / MANIFEST}: {os.strerror(errno.ELOOP)}; the run stops (the "
                                  "units recorded so far are kept)")
    manifest.close()
    assert outside.read_text() == ""
    (out / MANIFEST).unlink()
    (out / MANIFEST).mkdir()
    with pytest.raises(ManifestError, match="the run stops"):
        Manifest(out).append({"input": "/a", "status": "done"})


# ---------------------------------------------------------------------------------------------------- the lock

def test_the_lock_names_this_run_refuses_a_second_and_goes_with_its_run(tmp_path):
    with FolderLock(tmp_path):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["since"]
        with pytest.raises(FolderBusy) as busy, FolderLock(tmp_path):
            pass
        assert f"pid {os.getpid()} on {socket.gethostname()}, since {holder['since']}" in str(busy.value)
        assert str(tmp_path) in str(busy.value)
        assert json.loads((tmp_path / LOCK).read_text()) == holder  # the refused run changed nothing
    assert not (tmp_path / LOCK).exists()
    with FolderLock(tmp_path):  # free again
        pass


def test_a_dead_runs_lock_is_taken_over_and_said(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"), FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert any("took over" in r.getMessage() and f"pid {pid}" in r.getMessage() for r in caplog.records)


def test_a_lock_that_is_a_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).symlink_to(target)
    with pytest.raises(RunError, match="symbolic link"), FolderLock(out):
        pass
    assert target.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------- leftovers

def test_only_temporary_files_and_folders_are_removed_and_links_never_followed(tmp_path):
    out = tmp_path / "out"
    (out / "a.overlay").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    removed = [out / ".hamer-tmp-123-4.jsonl", out / ".hamer-tmp-123-5", out / "a.overlay" / ".hamer-tmp-9-1.jpg",
               out / ".hamer-tmp-7-2"]
    removed[0].write_text("part")
    removed[1].mkdir()
    (removed[1] / "000.json").write_text("{}")
    removed[2].write_bytes(b"jpg")
    removed[3].symlink_to(outside)  # a temporary name that is a link: the link goes, not what it points to
    kept = [out / "a.jsonl", out / "hamer-tmp-1-2.jsonl", out / ".hamer-tmp-abc", out / "a.overlay" / "x.jpg",
            out / ".hamer-tmp-1-2.json.bak"]
    for path in kept:
        path.write_text("mine")
    linked = out / "b.overlay"
    linked.symlink_to(outside)  # an overlay folder that is a link is not entered
    (outside / ".hamer-tmp-3-3.jpg").write_text("not this run's to remove")
    assert sorted(clean_temp_files(out)) == sorted(removed)
    assert not any(os.path.lexists(p) for p in removed)
    assert all(p.read_text() == "mine" for p in kept)
    assert (outside / "precious.txt").read_text() == "keep" and (outside / ".hamer-tmp-3-3.jpg").exists()
    assert clean_temp_files(out) == []


def test_a_line_cut_inside_a_character_is_skipped_not_fatal(tmp_path, caplog):
    good = json.dumps({"input": "/a", "status": "done"}).encode()
    (tmp_path / MANIFEST).write_bytes(good + b"\n" + b'{"input": "/\xc3')  # killed inside a 2-byte character
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"):
        assert Manifest(tmp_path).load() == {"/a": {"input": "/a", "status": "done"}}
    assert "line 2 is not a record" in caplog.text


@pytest.mark.parametrize("existing", ["", "{", '{"input": "/a", "status": "done"}\n'])
def test_an_append_starts_its_own_line_and_adds_no_blank_one(tmp_path, existing):
    (tmp_path / MANIFEST).write_text(existing)
    manifest = Manifest(tmp_path)
    try:
        manifest.append({"input": "/b", "status": "done"})
    finally:
        manifest.close()
    ended = existing if existing.endswith("\n") or not existing else existing + "\n"
    assert (tmp_path / MANIFEST).read_text() == ended + '{"input": "/b", "status": "done"}\n'


def test_a_new_manifest_gets_the_permissions_of_any_new_file(tmp_path):
    previous = os.umask(0o022)
    try:
        manifest = Manifest(tmp_path)
        manifest.append({"input": "/a", "status": "done"})
        manifest.close()
    finally:
        os.umask(previous)
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o644


def test_a_lock_file_removed_under_the_run_ends_it_cleanly(tmp_path):
    with FolderLock(tmp_path):
        (tmp_path / LOCK).unlink()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("content", ["[1, 2]", "not json", ""])
def test_a_dead_runs_lock_that_names_no_run_is_taken_over_silently(tmp_path, caplog, content):
    (tmp_path / LOCK).write_text(content)
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"), FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert "took over" not in caplog.text


def test_the_removal_of_leftovers_is_logged_with_its_count(tmp_path, caplog):
    (tmp_path / ".hamer-tmp-1-1.npz").write_bytes(b"x")
    (tmp_path / ".hamer-tmp-1-2").mkdir()
    with caplog.at_level(logging.INFO, logger="hamer.manifest"):
        clean_temp_files(tmp_path)
    assert caplog.messages == [f"removed 2 temporary file(s) and folder(s) of an interrupted run in {tmp_path}"]


def test_this_run_names_this_process_and_host():
    assert this_run() == {"pid": os.getpid(), "host": socket.gethostname()}


def test_bad_lines_are_logged_naming_the_file_and_line(tmp_path, caplog):
    (tmp_path / MANIFEST).write_text(json.dumps({"input": "/a", "status": "done"}) + "\nnot json\n")
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"):
        Manifest(tmp_path).load()
    assert caplog.messages == [f"{tmp_path / MANIFEST} line 2 is not a record (a run killed while writing it?); "
                               "ignored"]


def test_a_manifest_this_user_cannot_read_is_a_run_error_naming_it():
    with shared_temp_dir() as out:
        line = {"input": "/a", "status": "done"}
        (out / MANIFEST).write_text(json.dumps(line) + "\n")
        (out / MANIFEST).chmod(0)
        outcome, error = as_another_user(lambda: Manifest(out).load())
        assert outcome == "raised" and type(error) is RunError
        assert str(error) == f"cannot read {out / MANIFEST}: {os.strerror(errno.EACCES)}"
        if os.geteuid() == 0:  # root reads it
            assert Manifest(out).load() == {"/a": line}


def test_a_closed_manifest_opens_again_on_the_next_append(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append({"input": "/a", "status": "started"})
    manifest.close()
    manifest.close()  # twice: nothing
    manifest.append({"input": "/a", "status": "done"})
    manifest.close()
    assert (tmp_path / MANIFEST).read_text().splitlines() == ['{"input": "/a", "status": "started"}',
                                                              '{"input": "/a", "status": "done"}']


def test_a_second_run_is_refused_naming_the_live_holder_or_saying_it_is_unknown(tmp_path):
    with Holder(tmp_path / LOCK) as holder, pytest.raises(FolderBusy) as busy, FolderLock(tmp_path):
        pass
    assert str(busy.value) == (f"{tmp_path} is in use by another run (pid {holder.proc.pid} on "
                               f"{socket.gethostname()}, since then); wait for it to end or choose another --out")
    with Holder(tmp_path / LOCK, "") as holder, pytest.raises(FolderBusy) as busy, FolderLock(tmp_path):
        pass
    assert str(busy.value) == (f"{tmp_path} is in use by another run (pid and host unknown); wait for it to end or "
                               "choose another --out")


def test_the_take_over_of_a_dead_runs_lock_is_logged_whole(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="hamer.manifest"), FolderLock(tmp_path):
        pass
    assert caplog.messages == [f"{tmp_path}: took over the lock of a run that ended without releasing it (pid {pid} "
                               f"on {socket.gethostname()}, since then)"]


def test_a_lock_that_is_a_link_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunError) as refused, FolderLock(tmp_path):
        pass
    assert str(refused.value) == (f"{tmp_path / LOCK} is a symbolic link (to {tmp_path / 'elsewhere'}): the lock is "
                                  "not written through links; remove it or choose another --out")
    assert not (tmp_path / "elsewhere").exists()


def test_a_lock_that_cannot_be_created_is_a_run_error_naming_it(tmp_path):
    with pytest.raises(RunError) as refused, FolderLock(tmp_path / "missing"):
        pass
    assert str(refused.value) == f"cannot open {tmp_path / 'missing' / LOCK}: {os.strerror(errno.ENOENT)}"
    with shared_temp_dir() as out:
        out.chmod(0o555)  # a folder an ordinary user cannot write in

        def lock():
            with FolderLock(out):
                pass

        outcome, error = as_another_user(lock)
        assert outcome == "raised" and type(error) is RunError
        assert str(error) == f"cannot open {out / LOCK}: {os.strerror(errno.EACCES)}"
        if os.geteuid() == 0:  # root can
            lock()


def test_leftovers_this_user_cannot_remove_are_left_and_said_not_fatal(caplog):
    with shared_temp_dir() as out:
        (out / ".hamer-tmp-1-1.npz").write_bytes(b"in a folder not writable by an ordinary user")
        (out / ".hamer-tmp-1-2").mkdir()
        (out / ".hamer-tmp-1-2" / "000.json").write_text("{}")
        overlay = out / "a.overlay"
        overlay.mkdir()
        (overlay / ".hamer-tmp-1-3.jpg").write_bytes(b"removable: its folder is writable")
        overlay.chmod(0o777)
        (out / ".hamer-tmp-1-2").chmod(0o555)
        out.chmod(0o555)
        with caplog.at_level(logging.INFO, logger="hamer.manifest"):
            outcome = as_another_user(lambda: (clean_temp_files(out), caplog.messages))
        assert outcome[0] == "returned"
        removed, messages = outcome[1]
        assert removed == [overlay / ".hamer-tmp-1-3.jpg"]
        denied = os.strerror(errno.EACCES)
        assert sorted(messages) == sorted([
            f"cannot remove {out / '.hamer-tmp-1-1.npz'}, left by an interrupted run: {denied}",
            f"cannot remove {out / '.hamer-tmp-1-2'}, left by an interrupted run: {denied}",
            f"removed 1 temporary file(s) and folder(s) of an interrupted run in {out}"])
        assert (out / ".hamer-tmp-1-1.npz").exists() and (out / ".hamer-tmp-1-2" / "000.json").exists()
        assert not (overlay / ".hamer-tmp-1-3.jpg").exists()
        if os.geteuid() == 0:  # root removes them
            assert sorted(clean_temp_files(out)) == [out / ".hamer-tmp-1-1.npz", out / ".hamer-tmp-1-2"]
