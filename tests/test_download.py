"""``hamer download`` against a local HTTP server (127.0.0.1 only) serving a synthetic archive in the official layout
(``_DATA/hamer_ckpts/...``, ``_DATA/data/...``, ``_DATA/vitpose_ckpts/...``, macOS ``._`` files); the data path
defaults (CACHE_DIR_HAMER, HAMER_HOME, XDG_CACHE_HOME, the seed's ./hamer_ckpt/_DATA)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import tarfile
import threading
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
        self.send_header("ETag", '"v1"')
        self.end_headers()
        body = blob[start:]
        if self.server.drop_at is not None:
            body, self.server.drop_at = body[: self.server.drop_at], None
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def archive(data_dir) -> bytes:
    return make_archive(data_dir)


@pytest.fixture
def server(archive):
    srv = Server(("127.0.0.1", 0), Handler)
    srv.blob, srv.ranges = archive, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


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
    assert main(["download", "--accept-mano-license", "--url", url(server), "--data", str(root), "--force", "--quiet"]) == 0
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
    assert main(["download", "--accept-mano-license", "--from", str(tarball), "--data", str(root), "--safetensors", "--quiet"]) == 0
    assert "model: loads" in capsys.readouterr().out
    assert not (root / hcfg.CHECKPOINT_FILE).exists()
    assert hcfg.data_paths(root).checkpoint == root / hcfg.SAFETENSORS_FILE
    assert set(dl.verify_installed(root).values()) == {"ok"}
    assert hcfg.SAFETENSORS_FILE in json.loads((root / dl.MANIFEST_FILE).read_text())["files"]


def test_urls_and_disk_space(archive, server, tmp_path, monkeypatch):
    for bad in ("ftp://example.org/a.tar.gz", "file:///etc/passwd", "example.org/a.tar.gz"):
        with pytest.raises(ValueError, match="https"):
            dl.download(tmp_path / "d", url=bad)
    assert main(["download", "--accept-mano-license", "--url", "file:///etc/passwd", "--data", str(tmp_path / "d")]) == 1
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
    req = dl.urllib.request.Request("https://example.org/a.tar.gz")
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
