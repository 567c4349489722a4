"""``hamer download`` against a local HTTP server (127.0.0.1 only) serving a synthetic archive in the official layout
(``_DATA/hamer_ckpts/...``, ``_DATA/data/...``, ``_DATA/vitpose_ckpts/...``, macOS ``._`` files); the data path
defaults (CACHE_DIR_HAMER, HAMER_HOME, XDG_CACHE_HOME, the seed's ./hamer_ckpt/_DATA)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import hamer.configs as hcfg
from hamer import download as dl
from hamer.cli import main

OFFICIAL = {  # data-folder path -> installed
    "hamer_ckpts/checkpoints/hamer.ckpt": True,
    "hamer_ckpts/model_config.yaml": True,
    "hamer_ckpts/dataset_config.yaml": False,
    "data/mano_mean_params.npz": True,
    "vitpose_ckpts/vitpose+_huge/wholebody.pth": False,
}


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def make_archive(data_dir: Path, extra: tuple[tuple[str, dict], ...] = ()) -> bytes:
    """A .tar.gz in the layout of hamer_demo_data.tar.gz, from the synthetic data folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "_DATA", type=tarfile.DIRTYPE)
        for rel in OFFICIAL:
            source = data_dir / rel
            data = source.read_bytes() if source.is_file() else os.urandom(4096)
            _add(tar, f"_DATA/{rel}", data)
            _add(tar, f"_DATA/{Path(rel).parent}/._{Path(rel).name}", b"macOS metadata")
        for name, fields in extra:
            _add(tar, name, **fields)
    return buf.getvalue()


class Server(http.server.ThreadingHTTPServer):
    """Serves ``blob`` at every path with Range support; ``drop_at`` closes the connection after that many bytes
    of a response (once); ``ranges`` records each request's Range header."""

    blob = b""
    drop_at: int | None = None
    ranges: list[str | None]
    etag = '"v1"'
    mode = "normal"  # "endless": no size, bytes until the client stops (at most 64 MB); "huge": announces 10 TB;
    # "trickle": one byte every 50 ms; "silent": the headers, then nothing for 5 s; "slow-headers": headers trickle
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        pass  # a client that stops reading (the disk-space test) is no error here


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        blob, rng = self.server.blob, self.headers.get("Range")
        self.server.ranges.append(rng)
        if not self.path.endswith(".tar.gz"):
            self.send_error(404)
            return
        if self.server.mode != "normal":
            self.misbehave(self.server.mode, blob)
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start >= len(blob) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(blob)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        self.send_header("Content-Length", str(len(blob) - start))
        self.send_header("ETag", self.server.etag)
        self.end_headers()
        body = blob[start:]
        if self.server.drop_at is not None:
            body, self.server.drop_at = body[: self.server.drop_at], None
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body)

    def misbehave(self, mode: str, blob: bytes) -> None:
        if mode == "slow-headers":  # a header line, one byte every 50 ms, for 10 s at most
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            for _ in range(200):
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.05)
            self.close_connection = True
            return
        self.send_response(200)
        if mode in ("trickle", "silent"):
            self.send_header("Content-Length", str(len(blob)))
        elif mode == "huge":
            self.send_header("Content-Length", str(10**13))
        self.end_headers()
        if mode == "endless":
            for _ in range(64):
                self.wfile.write(os.urandom(1 << 20))
        elif mode == "trickle":
            for i in range(200):  # 10 s at most
                self.wfile.write(blob[i:i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        elif mode == "silent":
            time.sleep(5)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def archive(data_dir) -> bytes:
    return make_archive(data_dir)


@contextlib.contextmanager
def serving(blob: bytes) -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.blob, srv.ranges = blob, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(archive):
    with serving(archive) as srv:
        yield srv


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hamer_demo_data.tar.gz"


def installed(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def expected_files(data_dir: Path) -> dict[str, bytes]:
    return {rel: (data_dir / rel).read_bytes() for rel, keep in OFFICIAL.items() if keep}


def test_download_installs_what_inference_needs_then_check(server, data_dir, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root)]) == 0
    out = capsys.readouterr().out
    files = installed(root)
    manifest = json.loads(files.pop(dl.MANIFEST_FILE))
    assert files == expected_files(data_dir)  # no ViTPose, no dataset config, no ._ files, no leftovers
    assert manifest["archive_sha256"] == hashlib.sha256(server.blob).hexdigest()
    assert manifest["files"] == {rel: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                                 for rel, b in files.items()}
    assert "model: loads" in out and "verified 3 file(s)" in out
    assert server.ranges == [None]
    # a damaged file is told by `hamer check` (same size, other bytes)
    ckpt = root / hcfg.CHECKPOINT_FILE
    blob = bytearray(ckpt.read_bytes())
    blob[-100] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    assert main(["check", "--data", str(root)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    # an installed checkpoint is not downloaded again unless --force
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root)]) == 1
    assert server.ranges == [None]
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root), "--force",
                 "--quiet"]) == 0
    assert installed(root)[hcfg.CHECKPOINT_FILE] == expected_files(data_dir)[hcfg.CHECKPOINT_FILE]


def test_dropped_connection_resumes_on_the_next_call(server, data_dir, tmp_path):
    root = tmp_path / "data"
    server.drop_at = len(server.blob) // 2
    with pytest.raises(dl.DownloadError, match="run `hamer download` again to resume"):
        dl.download(root, url=url(server), retries=0)
    part = root / dl.WORK_DIR / (dl.ARCHIVE_NAME + ".part")
    assert part.stat().st_size == len(server.blob) // 2
    assert not (root / hcfg.CHECKPOINT_FILE).exists()  # nothing installed from half an archive
    dl.download(root, url=url(server), retries=0)
    assert server.ranges == [None, f"bytes={len(server.blob) // 2}-"]
    files = installed(root)
    files.pop(dl.MANIFEST_FILE)
    assert files == expected_files(data_dir)  # equal to a clean download; the work folder is gone


def test_dropped_connection_is_retried_within_one_call(server, data_dir, tmp_path):
    root = tmp_path / "data"
    server.drop_at = 1000
    manifest = dl.download(root, url=url(server), retries=2, backoff_s=0)
    assert server.ranges == [None, "bytes=1000-"]
    assert manifest.archive_sha256 == hashlib.sha256(server.blob).hexdigest()


def test_corrupt_or_truncated_archive_installs_nothing(server, tmp_path, capsys):
    root = tmp_path / "data"
    blob = bytearray(server.blob)
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)  # zeroed inside the compressed checkpoint
    server.blob = bytes(blob)
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root), "--quiet"]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err
    assert installed(root) == {}  # not even the files before the damage; the bad download deleted
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(server.blob[: len(server.blob) - 10])  # the gzip trailer (CRC, length) cut
    with pytest.raises(dl.DownloadError, match="corrupt or truncated"):
        dl.download(root, archive=truncated)
    assert installed(root) == {}


@pytest.mark.parametrize("name, fields, problem", [
    ("_DATA/../x", {"type": tarfile.REGTYPE}, "'..'"),
    ("/tmp/hamer_evil_x", {"type": tarfile.REGTYPE}, "absolute"),
    ("_DATA/hamer_ckpts/checkpoints/hamer.ckpt", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "link"),
    ("_DATA/data/mano/MANO_RIGHT.pkl", {"type": tarfile.LNKTYPE, "linkname": "../../x"}, "link"),
    ("_DATA/dev", {"type": tarfile.CHRTYPE}, "device"),
    ("_DATA/fifo", {"type": tarfile.FIFOTYPE}, "device"),
    ("C:\\hamer_evil_x", {"type": tarfile.REGTYPE}, "absolute"),
    ("C:hamer_evil_x", {"type": tarfile.REGTYPE}, "absolute"),
    ("\\\\server\\share\\hamer_evil_x", {"type": tarfile.REGTYPE}, "absolute"),
    ("\\hamer_evil_x", {"type": tarfile.REGTYPE}, "absolute"),
    ("_DATA\\..\\..\\hamer_evil_x", {"type": tarfile.REGTYPE}, "'..'"),
    ("_DATA/hamer_ckpts\\..\\..\\..\\hamer_evil_x", {"type": tarfile.REGTYPE}, "'..'"),
])
def test_unsafe_members_refuse_the_archive(data_dir, tmp_path, name, fields, problem):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_archive(data_dir, extra=((name, fields),)))
    root = tmp_path / "deep" / "data"
    with pytest.raises(dl.UnsafeArchiveError, match=problem):
        dl.download(root, archive=archive)
    assert installed(root) == {}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["evil.tar.gz"]
    assert not Path("/tmp/hamer_evil_x").exists()


def test_from_a_local_file(archive, data_dir, tmp_path, capsys):
    tarball = tmp_path / "hamer_demo_data.tar.gz"
    tarball.write_bytes(archive)
    root = tmp_path / "data"
    assert main(["download", "--accept-mano-license", "--from", str(tarball), "--data", str(root), "--quiet"]) == 0
    assert "model: loads" in capsys.readouterr().out
    files = installed(root)
    assert json.loads(files.pop(dl.MANIFEST_FILE))["source"] == str(tarball)
    assert files == expected_files(data_dir)
    assert tarball.read_bytes() == archive  # left in place


def test_safetensors_keeps_one_file(archive, tmp_path, capsys):
    tarball = tmp_path / "a.tar.gz"
    tarball.write_bytes(archive)
    root = tmp_path / "data"
    assert main(["download", "--accept-mano-license", "--from", str(tarball), "--data", str(root), "--safetensors",
                 "--quiet"]) == 0
    assert "model: loads" in capsys.readouterr().out
    assert not (root / hcfg.CHECKPOINT_FILE).exists()
    assert hcfg.data_paths(root).checkpoint == root / hcfg.SAFETENSORS_FILE
    assert set(dl.verify_installed(root).values()) == {"ok"}
    assert hcfg.SAFETENSORS_FILE in json.loads((root / dl.MANIFEST_FILE).read_text())["files"]


def test_urls_and_disk_space(archive, server, tmp_path, monkeypatch):
    for bad in ("ftp://example.org/a.tar.gz", "file:///etc/passwd", "example.org/a.tar.gz"):
        with pytest.raises(ValueError, match="https"):
            dl.download(tmp_path / "d", url=bad)
    assert main(["download", "--accept-mano-license", "--url", "file:///etc/passwd", "--data",
                 str(tmp_path / "d")]) == 1
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(dl.DownloadError, match="not enough free disk space"):
        dl.download(tmp_path / "d", url=url(server), retries=0)
    assert not (tmp_path / "d" / dl.WORK_DIR / (dl.ARCHIVE_NAME + ".part")).exists()


def test_http_error_and_full_disk_while_unpacking(server, data_dir, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download(root, url=url(server).replace(".tar.gz", ".zip"))
    assert server.ranges == [None]  # a 404 is not retried
    free = iter([10**12])  # room for the download, then none to unpack
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": next(free, 1000)})())
    with pytest.raises(dl.DownloadError, match="not enough free disk space .* to unpack"):
        dl.download(root, url=url(server))
    left = installed(root)
    record = json.loads(left.pop(f"{dl.WORK_DIR}/{dl.ARCHIVE_NAME}.source.json"))
    assert left == {dl.WORK_DIR + "/" + dl.ARCHIVE_NAME: server.blob}  # kept: no new download
    assert record["url"] == url(server) and record["complete"] is True and record["total"] == len(server.blob)
    assert record["url_sha256"] == hashlib.sha256(url(server).encode()).hexdigest() and record["etag"] == '"v1"'
    monkeypatch.undo()
    dl.download(root, url=url(server))
    assert server.ranges == [None, None]
    files = installed(root)
    files.pop(dl.MANIFEST_FILE)
    assert files == expected_files(data_dir)


def test_https_redirect_to_http_is_refused():
    handler = dl.NoDowngrade()
    req = urllib.request.Request("https://example.org/a.tar.gz")
    with pytest.raises(dl.DownloadError, match="not HTTPS"):
        handler.redirect_request(req, None, 302, "Found", {}, "http://example.org/a.tar.gz")
    assert handler.redirect_request(req, None, 302, "Found", {}, "https://mirror.org/a.tar.gz") is not None


def test_missing_checkpoint_names_the_command(tmp_path, capsys):
    from hamer.checkpoint import build_model

    with pytest.raises(FileNotFoundError, match=r"hamer download --data .*5\.6 GB"):
        build_model(hcfg.data_paths(tmp_path / "empty"))
    assert main(["check", "--data", str(tmp_path / "empty")]) == 1
    assert "hamer download --data" in capsys.readouterr().out


def test_data_folder_default(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", None)
    monkeypatch.delenv("HAMER_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hcfg.data_dir() == tmp_path / "xdg" / "hamer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hcfg.data_dir() == tmp_path / "home" / ".cache" / "hamer"
    monkeypatch.setenv("HAMER_HOME", "rel/home")
    assert hcfg.data_dir() == tmp_path / "rel" / "home"
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", "mine")
    assert hcfg.data_dir() == tmp_path / "mine"  # set by the user: wins
    assert hcfg.data_dir("given") == tmp_path / "given"
    # the seed's default folder, when only it holds a checkpoint
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", None)
    legacy = tmp_path / "hamer_ckpt" / "_DATA"
    (legacy / hcfg.CHECKPOINT_FILE).parent.mkdir(parents=True)
    (legacy / hcfg.CHECKPOINT_FILE).write_bytes(b"x")
    assert hcfg.data_dir() == legacy
    assert "the old default folder" in caplog.text and "HAMER_HOME" in caplog.text
    (tmp_path / "rel/home" / hcfg.CHECKPOINT_FILE).parent.mkdir(parents=True)
    (tmp_path / "rel/home" / hcfg.CHECKPOINT_FILE).write_bytes(b"x")
    assert hcfg.data_dir() == tmp_path / "rel" / "home"


def test_hamer_resolves_the_data_folder_when_made_and_downloads(tmp_path, monkeypatch, archive, server):
    from hamer.hamer_module import HAMER

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hcfg, "CACHE_DIR_HAMER", "rel")
    h = HAMER()
    monkeypatch.chdir("/")  # a notebook that changes directory keeps its data folder
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "rel"))) as exc:
        h.load()
    assert "hamer download" in str(exc.value) and "HAMER(download=True)" in str(exc.value)
    monkeypatch.setattr(dl, "DEFAULT_URL", url(server))
    h = HAMER(data_dir=tmp_path / "nb", download=True)
    h.load()
    assert h.cfg is not None and server.ranges == [None]
    HAMER(data_dir=tmp_path / "nb", download=True)  # already there: no request
    assert server.ranges == [None]


def test_gzip_crc_is_checked(tmp_path, data_dir):
    """A change the deflate stream does not notice (a stored block) is caught by the gzip CRC at the end."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        _add(tar, f"_DATA/{hcfg.CHECKPOINT_FILE}", (data_dir / hcfg.CHECKPOINT_FILE).read_bytes())
    blob = bytearray(gzip.compress(raw.getvalue(), compresslevel=0))  # level 0: stored blocks, bytes as they are
    blob[len(blob) // 2] ^= 0x01
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(bytes(blob))
    with pytest.raises(dl.DownloadError, match="corrupt"):
        dl.download(tmp_path / "data", archive=archive)
    assert not (tmp_path / "data" / hcfg.CHECKPOINT_FILE).exists()


# ------------------------------------------------------------------------------------------- sources and limits

def test_partial_download_of_another_url_is_not_resumed(archive, data_dir, tmp_path):
    root = tmp_path / "data"
    other = make_archive(data_dir, extra=(("_DATA/other.txt", {"type": tarfile.REGTYPE}),))
    with serving(other) as first, serving(archive) as second:
        first.drop_at = len(other) // 2
        with pytest.raises(dl.DownloadError, match="again to resume"):
            dl.download(root, url=url(first), retries=0)
        manifest = dl.download(root, url=url(second), retries=0)
        assert second.ranges == [None]  # not "bytes=N-" on top of the other file's half
    assert manifest.archive_sha256 == hashlib.sha256(archive).hexdigest() and manifest.source == url(second)


def test_complete_download_of_another_url_is_not_installed(archive, data_dir, tmp_path, monkeypatch):
    root = tmp_path / "data"
    other = make_archive(data_dir, extra=(("_DATA/other.txt", {"type": tarfile.REGTYPE}),))
    with serving(other) as first, serving(archive) as second:
        free = iter([10**12])  # room for the download, none to unpack: the complete archive stays
        monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": next(free, 1000)})())
        with pytest.raises(dl.DownloadError, match="to unpack"):
            dl.download(root, url=url(first))
        assert (root / dl.WORK_DIR / dl.ARCHIVE_NAME).read_bytes() == other
        monkeypatch.undo()
        manifest = dl.download(root, url=url(second))
        assert second.ranges == [None]
    assert manifest.archive_sha256 == hashlib.sha256(archive).hexdigest() and manifest.source == url(second)


def test_a_file_changed_on_the_server_is_downloaded_again_not_spliced(archive, data_dir, tmp_path):
    """The server ignores If-Range and resumes from a new file: the ETag tells, the half of the old one goes."""
    root = tmp_path / "data"
    new = make_archive(data_dir, extra=(("_DATA/other.txt", {"type": tarfile.REGTYPE}),))
    with serving(archive) as srv:
        srv.drop_at = len(archive) // 2
        with pytest.raises(dl.DownloadError):
            dl.download(root, url=url(srv), retries=0)
        srv.blob, srv.etag = new, '"v2"'
        manifest = dl.download(root, url=url(srv), retries=1, backoff_s=0)
        assert srv.ranges == [None, f"bytes={len(archive) // 2}-", None]
    assert manifest.archive_sha256 == hashlib.sha256(new).hexdigest()


def test_endless_or_oversized_response_is_refused(archive, tmp_path):
    root = tmp_path / "data"
    limits = dl.Limits(max_bytes=3_000_000)
    with serving(archive) as srv:
        srv.mode = "endless"
        with pytest.raises(dl.DownloadError, match=r"more than 3,000,000 bytes"):
            dl.download(root, url=url(srv), retries=0, limits=limits)
        assert srv.ranges == [None]  # not retried
        srv.mode = "huge"
        huge = r"announces 10,000,000,000,000 bytes \(10000\.0 GB\), more than the 3,000,000 "
        with pytest.raises(dl.DownloadError, match=huge):
            dl.download(root, url=url(srv), retries=0, limits=limits)
    assert installed(root) == {}  # the partial file removed


@pytest.mark.parametrize("mode, message", [("trickle", r"stalled: \d+ bytes in the last 0\.\d s"),
                                           ("silent", "no data for 0.4 s"),
                                           ("slow-headers", "no complete response headers within 0.4 s")])
def test_stalled_transfer_is_retried_then_given_up(archive, tmp_path, mode, message):
    root = tmp_path / "data"
    limits = dl.Limits(read_timeout_s=0.4, stall_s=0.4, stall_bytes=1000)
    with serving(archive) as srv:
        srv.mode = mode
        start = time.monotonic()
        with pytest.raises(dl.DownloadError, match=f"after 2 tries: {message}"):
            dl.download(root, url=url(srv), retries=1, backoff_s=0, limits=limits)
        assert time.monotonic() - start < 4.5  # (a sanity bound: the server would go on for 10 s)
        assert len(srv.ranges) == 2
    assert not (root / hcfg.CHECKPOINT_FILE).exists()


# ------------------------------------------------------------------------------------------- installs

def _archive_with(data_dir: Path, tmp_path: Path, replaced: dict[str, bytes]) -> Path:
    """A copy of the data folder with some files replaced, as an archive in the official layout."""
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    for rel, blob in replaced.items():
        (copy / rel).write_bytes(blob)
    path = tmp_path / "replaced.tar.gz"
    path.write_bytes(make_archive(copy))
    return path


def _alias_bomb(levels: int = 6) -> bytes:
    """A mapping in which each level holds the previous one 9 times: 9**levels mappings once aliases expand."""
    lines = ["l0: &l0 {x: 1, y: 2}"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(9)) + "}")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("junk", ["checkpoint", "config"])
def test_force_with_a_bad_archive_keeps_the_working_install(archive, data_dir, tmp_path, capsys, junk):
    root = tmp_path / "data"
    good = tmp_path / "good.tar.gz"
    good.write_bytes(archive)
    assert main(["download", "--accept-mano-license", "--from", str(good), "--data", str(root), "--quiet"]) == 0
    before = installed(root)
    if junk == "checkpoint":
        bad = _archive_with(data_dir, tmp_path, {hcfg.CHECKPOINT_FILE: os.urandom(200_000)})
    else:
        bad = _archive_with(data_dir, tmp_path, {hcfg.CONFIG_FILE: _alias_bomb()})
    capsys.readouterr()
    args = ["download", "--accept-mano-license", "--from", str(bad), "--data", str(root), "--quiet", "--force"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{bad} does not load as HaMeR" in err and f"the working install in {root} was left as it was" in err
    if junk == "config":
        assert "alias *l0 refused" in err and str(hcfg.CONFIG_FILE) in err
    assert installed(root) == before  # every file and the manifest as they were; no staging left
    # into an empty folder: nothing installed, and said so
    assert main(["download", "--accept-mano-license", "--from", str(bad), "--data", str(tmp_path / "new")]) == 1
    assert "nothing was installed" in capsys.readouterr().err
    assert installed(tmp_path / "new") == {}


def test_mano_licence_is_shown_and_must_be_accepted(server, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "--url", url(server), "--data", str(root)]) == 2  # stdin is not a terminal here
    out, err = capsys.readouterr()
    assert "https://mano.is.tue.mpg.de/license.html" in out and "non-commercial" in out
    assert "--accept-mano-license" in err and server.ranges == [] and not root.exists()
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root), "--quiet"]) == 0
    assert "https://mano.is.tue.mpg.de/license.html" in capsys.readouterr().out


@pytest.mark.parametrize("answer", ["n", "y"])
def test_on_a_terminal_the_licence_is_asked(data_dir, tmp_path, answer):
    """"y" goes on to the install: here of an archive whose config is refused, so that this process pays no model
    build (installs themselves are tested in-process)."""
    pty = pytest.importorskip("pty")
    tarball = _archive_with(data_dir, tmp_path, {hcfg.CONFIG_FILE: _alias_bomb()})
    root = tmp_path / "data"
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        os.write(master, f"{answer}\n".encode())
        done = subprocess.run([sys.executable, "-m", "hamer", "download", "--from", str(tarball), "--data", str(root),
                               "--quiet"], stdin=slave, capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.close(slave)
        os.close(master)
    assert "Do you accept MANO's licence? [y/N]" in done.stdout and "mano.is.tue.mpg.de/license.html" in done.stdout
    if answer == "n":
        assert done.returncode == 2 and "not accepted" in done.stderr and not root.exists()
    else:
        assert done.returncode == 1 and f"{tarball} does not load as HaMeR" in done.stderr, done.stderr
        assert "alias *l0 refused" in done.stderr and "not accepted" not in done.stderr


# ------------------------------------------------------------------------------------------- one at a time

HOLDER = """
import sys
from pathlib import Path
from hamer.download.lock import hold
with hold(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_download_is_refused_naming_the_first_and_leftovers_of_dead_ones_go(archive, tmp_path, capsys):
    root = tmp_path / "data"
    tarball = tmp_path / "a.tar.gz"
    tarball.write_bytes(archive)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(dl.DownloadError, match=rf"another `hamer download` \(pid {holder.pid} on \S+ since "):
            dl.download(root, archive=tarball)
        assert not (root / hcfg.CHECKPOINT_FILE).exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder is gone; a killed download's staging folder (its pid dead) and a lock file it left behind
    dead = root / dl.WORK_DIR / f"staging-{_dead_pid()}-xyz"
    (dead / "hamer_ckpts").mkdir(parents=True)
    (dead / "hamer_ckpts" / "big").write_bytes(b"x" * 1000)
    (root / dl.WORK_DIR / dl.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": "h", "started_utc": "t"}))
    live = root / dl.WORK_DIR / f"staging-{os.getppid()}-abc"  # a live process's (say, a reused pid)
    live.mkdir()
    dl.download(root, archive=tarball)
    assert not dead.exists() and (root / hcfg.CHECKPOINT_FILE).is_file()
    assert live.is_dir()  # left alone
    live.rename(live.with_name(f"staging-{_dead_pid()}-abc"))
    # `hamer download` on an installed folder removes them too
    assert main(["download", "--data", str(root)]) == 0
    assert "left by a download that was killed" in capsys.readouterr().out
    assert not (root / dl.WORK_DIR).exists()
