"""Inputs and outputs in object storage: runs from and into an S3 API server (moto's server mode, started on
127.0.0.1 by the fixture and stopped by it) compared with runs on local paths; the manifest, the second run, a run
killed mid-upload and ``--resume``, credentials never shown, bad URLs failing their unit only, ``file://`` URLs,
the bounded input cache. Real ``hamer run`` processes where a kill or the environment matters."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from hamer.cli import main
from hamer.corpus import Options, run_corpus
from hamer.manifest import MANIFEST
from hamer.run_types import InputError
from hamer.segment_parts import PARTS

from conftest import SHARED_IMAGES
from videos import manifest, pan_zoom, scenes, write_video

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
needs_images = pytest.mark.skipif(not (SHARED_IMAGES / "test4.jpg").is_file(), reason="no ../shared/images")
REPO = Path(__file__).resolve().parents[1]
KEY_ID = "AKIDTESTHAMER"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API server on 127.0.0.1 (moto), the environment that points S3 clients at it (this process's and
    the ``hamer`` processes'), and an s3fs file system on it; stopped when the module's tests are done."""
    requests = logging.getLogger("werkzeug")  # the server's request log: not the runs' stderr
    level = requests.level
    requests.setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    secret = "s3cr3t-" + secrets.token_hex(12)
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": KEY_ID,
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg_cache"))}
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    import s3fs

    # fsspec keeps its file systems by their arguments, not by the environment: one made for an earlier server
    # of this session (this module's tests split by xdist around other modules') would call its port
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    try:
        yield fs, env
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        requests.setLevel(level)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bucket(fs) -> str:
    name = "b" + secrets.token_hex(6)
    fs.mkdir(name)
    return name


def read_out(fs, url: str) -> dict[str, bytes]:
    """Every object under ``url``, by name relative to it."""
    root = url.removeprefix("s3://").rstrip("/")
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def lines_with_sources(data: bytes, old: str = "", new: str = "") -> list[dict]:
    """The JSONL lines of an output, ``old`` replaced by ``new`` in their ``source`` (the input's path or URL)."""
    rows = [json.loads(line) for line in data.decode().splitlines()]
    for row in rows:
        row["source"] = row["source"].replace(old, new)
    return rows


def records(text: bytes | str) -> list[dict]:
    text = text.decode() if isinstance(text, bytes) else text
    return [r for r in map(json.loads, text.splitlines()) if r["status"] not in ("started", "dispatched")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Local inputs: two photos, a folder of two photos, a clip made from a photo."""
    root = tmp_path_factory.mktemp("corpus")
    if not (SHARED_IMAGES / "test4.jpg").is_file():
        pytest.skip("no ../shared/images")
    (root / "a.jpg").write_bytes((SHARED_IMAGES / "test4.jpg").read_bytes())
    (root / "b.jpg").write_bytes((SHARED_IMAGES / "test1.jpg").read_bytes())
    (root / "frames").mkdir()
    for name in ("test5.jpeg", "test6.jpg"):
        (root / "frames" / name).write_bytes((SHARED_IMAGES / name).read_bytes())
    write_video(root / "clip.mp4", pan_zoom("test4.jpg", 6))
    return root


def upload_corpus(fs, corpus: Path) -> str:
    name = bucket(fs)
    fs.put(str(corpus) + "/", f"{name}/in/", recursive=True)
    return f"s3://{name}/in"


INPUTS = ("a.jpg", "b.jpg", "frames", "clip.mp4")


def test_s3_inputs_to_s3_out_equal_a_local_run_then_a_second_run_skips(s3, corpus, data_dir, tmp_path, capsys):
    fs, _ = s3
    local = tmp_path / "local"
    assert main(["run", *(str(corpus / i) for i in INPUTS), "--data", str(data_dir), "--out", str(local),
                 "--quiet"]) == 0
    src = upload_corpus(fs, corpus)
    out = src.replace("/in", "/out")
    assert main(["run", *(f"{src}/{i}" for i in INPUTS), "--data", str(data_dir), "--out", out, "--quiet"]) == 0
    objects = read_out(fs, out)
    names = {p.name for p in local.iterdir()}
    assert set(objects) == names  # the same files, the manifest compacted into one object, no lock left
    for name in names - {MANIFEST}:
        if name.endswith(".jsonl"):
            assert lines_with_sources(objects[name]) == lines_with_sources((local / name).read_bytes(), str(corpus),
                                                                           src)
            assert len(objects[name].splitlines()) in (1, 2, 6)
        else:  # the arrays of the NPZ: bit-identical
            with np.load(local / name) as want, np.load(__import__("io").BytesIO(objects[name])) as got:
                assert sorted(want.files) == sorted(got.files)
                for key in want.files:
                    if want[key].dtype.kind == "U":  # the frames' sources: the input's path, or its URL
                        np.testing.assert_array_equal(got[key], np.char.replace(want[key], str(corpus), src))
                    else:
                        np.testing.assert_array_equal(got[key], want[key])
    theirs, ours = records(objects[MANIFEST]), records((local / MANIFEST).read_text())
    fields = ("name", "status", "files", "frames", "expected_frames", "hands")  # (units finish in any order)
    assert {r["input"]: [r[f] for f in fields] for r in theirs} == \
        {r["input"].replace(str(corpus), src): [r[f] for f in fields] for r in ours}
    assert {r["name"]: r["expected_frames"] for r in theirs}["clip"] == 6 and all(r["stat"][0] > 0 for r in theirs)
    # a second run skips every unit; one with other options is refused before anything is written
    capsys.readouterr()
    assert main(["run", *(f"{src}/{i}" for i in INPUTS), "--data", str(data_dir), "--out", out]) == 0
    said = capsys.readouterr().out
    assert "0 unit(s) run now, 4 skipped" in said and said.count("done earlier") == 3
    assert main(["run", f"{src}/a.jpg", "--data", str(data_dir), "--out", out, "--vertices"]) == 1
    assert "--vertices" in capsys.readouterr().err
    assert read_out(fs, out) == objects
    # files of the output URL that no record accounts for are not replaced
    fs.pipe_file(out.removeprefix("s3://") + "/c.jsonl", b"someone's")
    fs.pipe_file(src.removeprefix("s3://") + "/c.jpg", (corpus / "a.jpg").read_bytes())
    assert main(["run", f"{src}/c.jpg", "--data", str(data_dir), "--out", out]) == 1
    assert f"{out}/c.jsonl exists and no record" in capsys.readouterr().err
    assert fs.cat_file(out.removeprefix("s3://") + "/c.jsonl") == b"someone's"


# A ``hamer run`` whose first unit uploads a damaged first file, says so in a marker file, then hangs: killed there.
HOOK = """
import sys, time
from pathlib import Path
import hamer.remote_out as remote_out

def hang(self, files):
    self.fs.pipe_file(self.root + "/" + files[0], b"PARTIAL")
    Path(sys.argv[1]).write_text("uploading")
    time.sleep(600)

remote_out.Upload.publish = hang
from hamer.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_run_killed_mid_upload_leaves_no_record_and_the_next_run_redoes_the_unit(s3, corpus, tmp_path):
    fs, _ = s3
    src = upload_corpus(fs, corpus)
    out = src.replace("/in", "/out")
    inputs = ["run", f"{src}/clip.mp4", f"{src}/a.jpg", "--bbox-only", "--detect-workers", "1"]
    args = [*inputs, "--out", out, "--quiet"]
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", HOOK, str(marker), *args], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    left = read_out(fs, out)
    assert b"PARTIAL" in left.values() and MANIFEST not in left  # killed: its records are objects, uncompacted
    latest = {}
    for name in sorted(n for n in left if n.startswith("manifest.d/")):
        rec = json.loads(left[name])
        latest[rec["input"]] = rec["status"]
    assert "done" not in latest.values() and "started" in latest.values()  # no record of a unit not uploaded
    again = subprocess.run([sys.executable, "-m", "hamer", *args], cwd=REPO, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    assert f"took over the lock of a run that ended without releasing it (pid {proc.pid} on " in again.stderr
    done = read_out(fs, out)
    assert b"PARTIAL" not in done.values() and not any(n.startswith(("manifest.d/", ".hamer")) for n in done)
    final = {r["input"]: r for r in records(done[MANIFEST])}
    assert {r["status"] for r in final.values()} == {"done"} and len(final) == 2
    for rec in final.values():
        assert all(done[f] for f in rec["files"])
    clip = [json.loads(line)["frame"] for line in done["clip.jsonl"].decode().splitlines()]
    assert clip == list(range(6))
    # what a clean run into a fresh prefix writes
    clean = src.replace("/in", "/clean")
    assert main([*inputs, "--out", clean, "--quiet"]) == 0
    fresh = read_out(fs, clean)
    for name in ("clip.jsonl", "a.jsonl"):
        assert done[name] == fresh[name]
    # a --resume run now has nothing to redo
    again = subprocess.run([sys.executable, "-m", "hamer", *inputs, "--out", out, "--resume"], cwd=REPO,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "0 unit(s) run now, 2 skipped" in again.stdout


def test_credentials_are_never_shown_or_written(s3, corpus, tmp_path):
    fs, env = s3
    src = upload_corpus(fs, corpus)
    out = src.replace("/in", "/out")
    inline = "inl1ne-" + secrets.token_hex(8)
    with_creds = src.replace("s3://", f"s3://{KEY_ID}:{inline}@")
    cmd = [sys.executable, "-m", "hamer", "-v", "run", f"{src}/a.jpg", f"{with_creds}/b.jpg", f"{src}/missing.jpg",
           f"{with_creds}/nope.mp4", f"{with_creds}/clip.mp4", "--segment-frames", "4", "--segment-warmup", "2",
           "--bbox-only", "--out", out]  # the clip (6 frames) as segments, joined by the driver
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1  # the two missing objects failed
    said = done.stdout + done.stderr
    objects = read_out(fs, out)
    for secret in (env["AWS_SECRET_ACCESS_KEY"], inline):
        assert secret not in said
        assert not any(secret.encode() in data for data in objects.values())
    final = {r["input"]: r for r in records(objects[MANIFEST])}
    hidden = src.replace("s3://", "s3://***@")
    assert set(final) == {f"{src}/a.jpg", f"{hidden}/b.jpg", f"{src}/missing.jpg", f"{hidden}/nope.mp4",
                          f"{hidden}/clip.mp4"}
    assert final[f"{hidden}/b.jpg"]["status"] == "done"  # read with the URL's own credentials
    assert final[f"{hidden}/clip.mp4"]["status"] == "done" and final[f"{hidden}/clip.mp4"]["segments"] == 2
    assert json.loads(objects["clip.jsonl"].splitlines()[0])["source"] == f"{hidden}/clip.mp4"
    assert f"{hidden}/nope.mp4" in said and f"{src}/missing.jpg" in said
    # the second run: the objects done are skipped; the missing ones are not units and fail again, as local paths do
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    said = again.stdout + again.stderr
    assert again.returncode == 1 and f"{hidden}/b.jpg: done earlier" in said
    assert f"{hidden}/nope.mp4: no such object or prefix" in said
    assert env["AWS_SECRET_ACCESS_KEY"] not in said and inline not in said


def test_bad_urls_and_objects_fail_only_their_unit(s3, corpus, tmp_path, capsys):
    fs, _ = s3
    src = upload_corpus(fs, corpus)
    fs.pipe_file(src.removeprefix("s3://") + "/junk.mp4", os.urandom(4000))
    out = src.replace("/in", "/out")
    inputs = [f"{src}/a.jpg", f"{src}/missing.jpg", f"{src}/junk.mp4",
              f"s3://no-such-bucket-{secrets.token_hex(4)}/x.mp4", f"{src}/empty-prefix/"]
    assert main(["run", *inputs, "--bbox-only", "--out", out, "--quiet"]) == 1
    err = capsys.readouterr().err
    final = {r["input"]: r for r in records(read_out(fs, out)[MANIFEST])}
    assert final[f"{src}/a.jpg"]["status"] == "done"
    for url in inputs[1:]:
        assert final[url]["status"] == "failed" and final[url]["files"] == []
        assert f"error: {url}: " in err
    assert "no such object or prefix" in final[f"{src}/missing.jpg"]["error"]
    assert "no frame" in final[f"{src}/junk.mp4"]["error"] or "OpenCV" in final[f"{src}/junk.mp4"]["error"]


def test_file_urls_run_as_their_local_paths(corpus, tmp_path):
    local, urls = tmp_path / "local", tmp_path / "urls"
    assert main(["run", *(str(corpus / i) for i in INPUTS), "--bbox-only", "--out", str(local), "--quiet"]) == 0
    assert main(["run", *((corpus / i).as_uri() for i in INPUTS), "--bbox-only", "--out", urls.as_uri(),
                 "--quiet"]) == 0
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in urls.iterdir())
    for name in names:
        if name != MANIFEST:
            assert (local / name).read_bytes() == (urls / name).read_bytes()
    assert sorted(r["input"] for r in manifest(urls)) == sorted(str(corpus / i) for i in INPUTS)


def test_a_list_file_at_a_url(s3, corpus, capsys):
    fs, _ = s3
    src = upload_corpus(fs, corpus)
    fs.pipe_file(src.removeprefix("s3://") + "/list.txt", f"# two\n{src}/a.jpg\n\n{corpus / 'b.jpg'}\n".encode())
    out = src.replace("/in", "/out")
    assert main(["run", "--list", f"{src}/list.txt", "--bbox-only", "--out", out, "--quiet"]) == 0
    assert sorted(r["input"] for r in records(read_out(fs, out)[MANIFEST])) == [str(corpus / "b.jpg"), f"{src}/a.jpg"]


def test_a_second_run_on_a_locked_output_url_is_refused(s3, capsys):
    from hamer.remote_out import ObjectLock

    fs, _ = s3
    out = f"s3://{bucket(fs)}/out"
    with ObjectLock(out):
        with pytest.raises(Exception, match="in use by another run"):
            ObjectLock(out).__enter__()  # the conditional create fails: exactly one holder
        assert main(["run", "x.jpg", "--bbox-only", "--out", out]) == 1
        assert "is in use by another run (pid" in capsys.readouterr().err
    assert read_out(fs, out) == {}  # released: the lock object removed


def test_the_input_cache_stays_within_its_size(s3, tmp_path):
    from hamer.input_cache import InputCache

    fs, _ = s3
    name = bucket(fs)
    for i in range(4):
        fs.pipe_file(f"{name}/v{i}.mp4", bytes([i]) * 1000)
    cache = InputCache(2500, tmp_path / "cache")

    def held() -> int:
        return sum(p.stat().st_size for p in (tmp_path / "cache").iterdir())

    with cache.local(f"s3://{name}/v0.mp4") as first:
        assert first.read_bytes() == bytes([0]) * 1000
        with cache.local(f"s3://{name}/v1.mp4"):
            pass
        with cache.local(f"s3://{name}/v2.mp4") as third:  # v1 goes: least recently used and not in use
            assert first.exists() and third.read_bytes() == bytes([2]) * 1000 and held() <= 2500
        copies = sorted(p.name for p in (tmp_path / "cache").iterdir())  # each with its (empty) lock file
        assert copies == sorted([first.name, f"{first.name}.lock", third.name, f"{third.name}.lock"])
    with cache.local(f"s3://{name}/v3.mp4"):
        assert held() <= 2500
    fs.pipe_file(f"{name}/big.mp4", b"x" * 3000)
    with pytest.raises(InputError, match="larger than the input cache .--cache-size"):
        with cache.local(f"s3://{name}/big.mp4"):
            pass
    fs.pipe_file(f"{name}/v0.mp4", b"changed" * 100)  # a new version is fetched again
    with cache.local(f"s3://{name}/v0.mp4") as again:
        assert again.read_bytes() == b"changed" * 100


def test_threads_wanting_one_object_at_once_fetch_it_once(s3, tmp_path, caplog):
    """The segments of one video start together in two detection threads (or Ray workers of one machine): one
    fetches the object, the others wait for its copy (they once fetched it too, into one .part file named by the
    process, and one of them failed)."""
    from hamer.input_cache import InputCache

    fs, _ = s3
    name = bucket(fs)
    blob = os.urandom(24 * 2**20)
    fs.pipe_file(f"{name}/v.mp4", blob)
    cache = InputCache(10**9, tmp_path / "cache")
    start = threading.Barrier(4)
    got: list = []

    def want() -> None:
        start.wait()
        try:
            with cache.local(f"s3://{name}/v.mp4") as path:
                got.append(path.read_bytes() == blob)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            got.append(exc)

    with caplog.at_level(logging.INFO, logger="hamer.input_cache"):
        threads = [threading.Thread(target=want) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert got == [True] * 4
    assert sum("into the input cache" in m for m in caplog.messages) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".part")]


@needs_images
def test_video_objects_are_probed_for_their_frame_count_from_their_header(s3, tmp_path, caplog):
    """The frame count and rate OpenCV reads from the local file, read from the object (by PyAV); an object whose
    header cannot be read keeps 0 frames (run whole), which is logged."""
    from hamer.remote_inputs import probe_frames
    from hamer.units import Unit

    fs, _ = s3
    name = bucket(fs)
    clip = write_video(tmp_path / "v.mp4", pan_zoom("test4.jpg", 13), fps=25.0)
    cap = cv2.VideoCapture(str(clip))
    want = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    fs.put_file(str(clip), f"{name}/v.mp4")
    fs.pipe_file(f"{name}/bad.mp4", secrets.token_bytes(5000))
    units = [Unit(f"s3://{name}/v.mp4", "video"), Unit(f"s3://{name}/bad.mp4", "video")]
    with caplog.at_level(logging.INFO, logger="hamer.remote_inputs"):
        probe_frames(units)
    assert (units[0].frames, units[0].fps) == want == (13, 25.0)
    assert units[1].frames == 0 and "bad.mp4: its frame count is not in its header; it is run whole" in caplog.text


def test_a_url_without_the_extra_names_it(tmp_path):
    code = ("import sys; sys.modules['fsspec'] = None; from hamer.cli import main; "
            f"sys.exit(main(['run', 's3://b/a.jpg', '--bbox-only', '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'pip install "hamer[cloud]"' in done.stderr and "INPUT" in done.stderr
    assert "Traceback" not in done.stderr


def test_images_from_urls_get_the_header_checks(s3, tmp_path):
    from hamer.images import ImageError, read_image

    fs, _ = s3
    name = bucket(fs)
    ok, png = cv2.imencode(".png", np.zeros((40, 30, 3), np.uint8))
    fs.pipe_file(f"{name}/small.png", png.tobytes())
    assert read_image(f"s3://{name}/small.png").shape == (40, 30, 3)
    with pytest.raises(ImageError, match=f"s3://{name}/small.png: 30 x 40 = 1200 pixels, over the limit"):
        read_image(f"s3://{name}/small.png", max_pixels=1000)
    fs.pipe_file(f"{name}/text.jpg", b"not an image at all")
    with pytest.raises(ImageError, match="not an image whose size"):
        read_image(f"s3://{name}/text.jpg")


def test_ray_workers_read_inputs_and_write_outputs_through_the_url(s3, corpus, onnx_cache, tmp_path):
    """Ray workers read the URLs and upload their files; a video's segments (the parts uploaded by the workers)
    joined by the driver through the URL equal an unsegmented run's JSON."""
    pytest.importorskip("ray")
    from ray_helpers import hamer_env, kill_marked, new_mark, run_cli, short_temp_dir

    fs, _ = s3
    src = upload_corpus(fs, corpus)
    args = [f"{src}/clip.mp4", f"{src}/frames", "--bbox-only", "--quiet"]
    mark = new_mark()
    env = hamer_env(onnx_cache, mark, short_temp_dir())
    try:
        with ThreadPoolExecutor(1) as pool:  # the Ray run, and meanwhile the local one
            ray_args = [*args, "--out", src.replace("/in", "/ray"), "--engine", "ray", "--workers", "2",
                        "--detect-workers", "1", "--segment-frames", "3"]  # the clip: 2 segments, joined
            ray_run = pool.submit(run_cli, ray_args, env)
            assert main(["run", *args, "--out", src.replace("/in", "/local")]) == 0
            done = ray_run.result()
    finally:
        kill_marked(mark)
    assert done.returncode == 0, done.stderr
    local, ray = read_out(fs, src.replace("/in", "/local")), read_out(fs, src.replace("/in", "/ray"))
    assert set(local) == set(ray)
    for name in set(local) - {MANIFEST}:
        assert local[name] == ray[name] if name.endswith(".jsonl") else len(ray[name]) > 0
    lines = [json.loads(line) for line in ray[MANIFEST].decode().splitlines()]
    assert sorted(r["status"] for r in lines) == ["dispatched"] * 3 + ["done"] * 4
    assert sorted(tuple(r["segment"]) for r in lines if r["status"] == "done" and "segment" in r) == [(0, 3), (3, 6)]
    assert all(r["node"]["ray_node_id"] for r in lines if r["status"] == "done" and ("segment" in r or
                                                                                     r["name"] != "clip"))
    (clip,) = [r for r in lines if r["name"] == "clip" and "segment" not in r]  # joined by the driver
    assert (clip["status"], clip["frames"], clip["segments"]) == ("done", 6, 2)


@pytest.mark.parametrize("text, shown", [
    ("s3://AKID:se%2Fcret@bkt/a.mp4", "s3://***@bkt/a.mp4"),
    ("gs://bkt/a.mp4?X-Goog-Signature=abc123", "gs://bkt/a.mp4?***"),
    ("s3://bkt/dir/a.mp4", "s3://bkt/dir/a.mp4"),
    ("/data/user:pass@x/a.mp4", "/data/user:pass@x/a.mp4"),  # a local path is shown as it is
])
def test_urls_are_shown_without_credentials(text, shown):
    from hamer.storage import redact

    assert redact(text) == shown


def test_file_urls_name_local_paths_and_other_protocols_name_their_package(tmp_path, capsys):
    from hamer.storage import is_url, local_path, url_name

    assert local_path("file:///data/a%20b.mp4") == "/data/a b.mp4" and not is_url("file:///data/a.mp4")
    assert local_path("FILE://localhost/x") == "/x" and local_path("/plain/path") == "/plain/path"
    assert [url_name(u) for u in ("s3://b/x/", "s3://k:s@bkt", "gs://b/a.mp4?sig=1")] == ["x", "bkt", "a.mp4"]
    if __import__("importlib").util.find_spec("adlfs") is None:
        assert main(["run", "az://container/a.mp4", "--bbox-only", "--out", str(tmp_path / "o")]) == 2
        assert "adlfs" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cache_size_is_parsed_and_a_video_over_it_fails_its_unit(s3, corpus, capsys):
    from hamer.cli.args import size_bytes

    assert [size_bytes(v) for v in ("500MB", "20GB", "1.5 kB", "4096")] == [500 * 10**6, 20 * 10**9, 1500, 4096]
    fs, _ = s3
    src = upload_corpus(fs, corpus)
    out = src.replace("/in", "/out")
    with pytest.raises(SystemExit):
        main(["run", f"{src}/clip.mp4", "--bbox-only", "--out", out, "--cache-size", "lots"])
    assert "argument --cache-size: not a size: 'lots'" in capsys.readouterr().err
    size = (corpus / "clip.mp4").stat().st_size
    assert main(["run", f"{src}/clip.mp4", f"{src}/a.jpg", "--bbox-only", "--out", out, "--quiet",
                 "--cache-size", str(size - 1)]) == 1
    final = {r["input"]: r for r in records(read_out(fs, out)[MANIFEST])}
    assert final[f"{src}/a.jpg"]["status"] == "done"  # images are streamed, not cached
    assert final[f"{src}/clip.mp4"]["status"] == "failed"
    assert "larger than the input cache (--cache-size" in final[f"{src}/clip.mp4"]["error"]


def test_an_output_url_that_cannot_be_written_stops_the_run_naming_it(s3, corpus, capsys):
    fs, _ = s3
    src = upload_corpus(fs, corpus)
    out = f"s3://no-such-bucket-{secrets.token_hex(4)}/out"
    assert main(["run", f"{src}/a.jpg", "--bbox-only", "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot write the lock {out}/.hamer-lock" in err and "Traceback" not in err


@needs_images
def test_segments_from_s3_into_s3_equal_a_local_segmented_run_and_resume_from_their_parts(s3, data_dir, tmp_path):
    """A video at a URL is split (its frame count read from its header at plan time); its parts go to
    ``OUT/.hamer-segments/`` in the output URL, are joined by the driver into the files a local segmented run
    writes, then removed; a second run skips; a run stopped between the join and the video's record joins again
    from the parts; a failed segment keeps the others' parts in the URL and ``--resume`` runs only it."""
    from test_segments import FailingBoxes

    fs, _ = s3
    clip = write_video(tmp_path / "long.mp4", scenes(10), fps=30.0)  # 40 frames, hands crossing the borders
    # one crop per network call: no float rounding from batches composed differently (timing) between the runs;
    # fixed boxes (no MediaPipe: what is compared is where the results go, not how hands are found)
    options = Options(data=str(data_dir), formats=("jsonl", "npz"), segment_frames=15, segment_warmup=10,
                      batch_size=1, detector=FailingBoxes(str(tmp_path / "never"), -1))
    local = tmp_path / "local"
    (want,) = run_corpus([str(clip)], local, options)
    src = f"s3://{bucket(fs)}/in"
    fs.put_file(str(clip), src.removeprefix("s3://") + "/long.mp4")
    out = src.replace("/in", "/out")
    (got,) = run_corpus([f"{src}/long.mp4"], out, options)
    fields = ("status", "frames", "expected_frames", "hands", "files", "segments")
    assert [got[f] for f in fields] == [want[f] for f in fields] and got["segments"] == 3, got.get("error")
    objects = read_out(fs, out)
    assert set(objects) == {p.name for p in local.iterdir()}  # no part left
    assert lines_with_sources(objects["long.jsonl"]) == lines_with_sources((local / "long.jsonl").read_bytes(),
                                                                           str(clip), f"{src}/long.mp4")
    with np.load(local / "long.npz") as a, np.load(__import__("io").BytesIO(objects["long.npz"])) as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            if a[name].dtype.kind != "U":
                np.testing.assert_array_equal(b[name], a[name])
    lines = records(objects[MANIFEST])
    # (in the order they ended: two detection threads run two segments at once)
    assert sorted(tuple(r["segment"]) for r in lines if "segment" in r) == [(0, 15), (15, 30), (30, 40)]
    assert run_corpus([f"{src}/long.mp4"], out, options) == []  # done earlier
    assert read_out(fs, out) == objects
    # a run stopped between the join's upload and the video's record: the next one joins the parts again
    from hamer.remote_out import ObjectManifest

    append = ObjectManifest.append

    def stop_at_the_video(self, record):
        if record["status"] == "done" and "segment" not in record:
            raise KeyboardInterrupt
        append(self, record)

    out = src.replace("/in", "/stopped")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ObjectManifest, "append", stop_at_the_video)
        with pytest.raises(KeyboardInterrupt):
            run_corpus([f"{src}/long.mp4"], out, options)
    stopped = read_out(fs, out)
    assert "long.jsonl" in stopped and sum(n.startswith(PARTS) for n in stopped) == 3
    (again,) = run_corpus([f"{src}/long.mp4"], out, options)
    assert [again[f] for f in fields] == [want[f] for f in fields]
    segments = [r.get("segment") for r in records(read_out(fs, out)[MANIFEST])]
    assert sorted(segments[:-1]) == [[0, 15], [15, 30], [30, 40]] and segments[-1] is None
    assert not any(n.startswith(PARTS) for n in read_out(fs, out))
    # a segment that fails: the video fails, the others' parts stay in the URL; --resume runs only the failed one
    flag = tmp_path / "poison"
    flag.touch()
    out = src.replace("/in", "/failing")
    failing = Options(**{**vars(options), "detector": FailingBoxes(str(flag), 17)})  # (warm-up of [30, 40): 20..29)
    (rec,) = run_corpus([f"{src}/long.mp4"], out, failing)
    assert rec["status"] == "failed" and rec["error"].startswith("segment [15, 30) failed: poisoned frame 17")
    parts = sorted(n for n in read_out(fs, out) if n.startswith(PARTS))
    assert parts == [f"{PARTS}/long/{s:012d}-{e:012d}.npz" for s, e in ((0, 15), (30, 40))]
    flag.unlink()
    before = len(records(read_out(fs, out)[MANIFEST]))
    (rec,) = run_corpus([f"{src}/long.mp4"], out, failing, resume=True)
    assert (rec["status"], rec["frames"], rec["segments"]) == ("done", 40, 3)
    after = records(read_out(fs, out)[MANIFEST])[before:]
    assert [tuple(r["segment"]) for r in after if "segment" in r] == [(15, 30)]
    objects = read_out(fs, out)
    assert not any(n.startswith(PARTS) for n in objects)
    with np.load(__import__("io").BytesIO(objects["long.npz"])) as npz:
        assert npz["present"][:, 0].all() and (npz["track_id"][:, 0] == 0).all()  # one track, joined across
        np.testing.assert_allclose(npz["box"][:, 0, 0], 100 + np.arange(40) % 7)
