"""The default CPU path's ONNX cache: what identifies an entry, where it lives, what its load check catches, how its
first export is announced, and the torch fallback when memory is short (small synthetic model)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from processes import dead_pid

import hamer.configs
import hamer.export
import hamer.onnx_cache
from hamer.checkpoint import build_model, save_safetensors
from hamer.checkpoint_digest import checkpoint_digest
from hamer.configs import SAFETENSORS_FILE, data_paths, load_config
from hamer.export import export_onnx, write_onnx
from hamer.hamer_module import HAMER
from hamer.models import OUTPUT_NAMES
from hamer.onnx_cache import cache_dir, cache_key, output_mismatches, tolerance
from hamer.onnx_runtime import OnnxRuntime
from hamer.torch_runtime import TorchRuntime

from synthetic import make_data_dir

BOXES = {"Right": [100, 100, 250, 300], "Left": [350, 120, 500, 320]}


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (480, 640, 3)).astype(np.uint8)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty ONNX cache of this test's own."""
    path = tmp_path / "onnx_cache"
    monkeypatch.setattr(hamer.configs, "ONNX_CACHE_DIR", path)
    return path


@pytest.fixture
def own_data(tmp_path: Path, data_dir: Path) -> Path:
    """A copy of the small data folder that a test may change."""
    return Path(shutil.copytree(data_dir, tmp_path / "_DATA"))


def _network(hamer_: HAMER):
    hamer_.load()
    return hamer_.reconstructor.network


def _outputs(hamer_: HAMER, image: np.ndarray) -> dict:
    hamer_.process(image, BOXES)
    return {k: hamer_.result[k] for k in ("keypoints_3d", "keypoints_2d", "cam_t_full", "vertices", "pred_cam")}


# |ONNX Runtime - torch| allowed in these outputs: metres, pixels (2D), relative for the camera
ONNX_TOLERANCE = {"keypoints_3d": 1e-5, "vertices": 1e-5, "keypoints_2d": 1e-3, "cam_t_full": 1e-4, "pred_cam": 1e-5}


def _assert_outputs_close(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got[key], value, atol=ONNX_TOLERANCE[key] * scale, rtol=0, err_msg=key)


# --- what the load check compares ---


def test_every_output_is_compared_with_its_tolerance() -> None:
    rng = np.random.default_rng(0)
    expected = {name: rng.normal(size=(2, 5)).astype(np.float32) for name in OUTPUT_NAMES}
    assert output_mismatches(dict(expected), expected) == []
    for name in OUTPUT_NAMES:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        within, beyond = dict(expected), dict(expected)
        within[name] = expected[name] + np.float32(0.5 * tolerance(name) * scale)
        beyond[name] = expected[name].copy()
        beyond[name][1, 3] += 3 * tolerance(name) * scale
        assert output_mismatches(within, expected) == [], name
        problems = output_mismatches(beyond, expected)
        assert len(problems) == 1 and problems[0].startswith(name), (name, problems)
    assert tolerance("pred_keypoints_3d") == tolerance("pred_vertices") == 1e-6  # metres
    extra = {**expected, "new_output": np.zeros(3, np.float32)}  # an output the entry did not store
    assert output_mismatches(extra, expected) == ["new_output: shape (3,), stored None"]
    fewer = {k: v for k, v in expected.items() if k != "betas"}
    assert output_mismatches(fewer, expected) == ["betas missing from the runtime's outputs"]
    nan = {**expected, "pred_cam": np.full_like(expected["pred_cam"], np.nan)}
    assert output_mismatches(nan, expected)[0].startswith("pred_cam off by nan")


def test_tampered_camera_head_is_rejected_and_rebuilt(cache: Path, data_dir: Path, image: np.ndarray,
                                                      caplog) -> None:
    reference = _outputs(HAMER(data_dir=data_dir, task_paths={}, backend="torch"), image)
    path = _network(HAMER(data_dir=data_dir, task_paths={})).path
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name.endswith("mano_head.deccam.weight"))
    original = numpy_helper.to_array(weight).copy()
    weight.CopyFrom(numpy_helper.from_array(original + np.float32(0.05), weight.name))  # moves cam_t, not joints
    path.with_name("hamer.onnx.data").unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="hamer.onnx.data")
    tampered = OnnxRuntime(path)(hamer.onnx_cache.check_crops(load_config(
        data_paths(data_dir).config)))
    with np.load(path.with_name("check.npz")) as stored:  # the tampering shows in the camera only
        assert np.abs(tampered["pred_keypoints_3d"] - stored["pred_keypoints_3d"]).max() <= 1e-6
        assert np.abs(tampered["pred_cam_t"] - stored["pred_cam_t"]).max() > 1e-2
    with caplog.at_level(logging.WARNING, logger="hamer"):
        again = HAMER(data_dir=data_dir, task_paths={})
        _assert_outputs_close(_outputs(again, image), reference)
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "pred_cam" in rejected[0], caplog.text
    rebuilt = onnx.load(str(path))
    weight = next(t for t in rebuilt.graph.initializer if t.name.endswith("mano_head.deccam.weight"))
    np.testing.assert_array_equal(numpy_helper.to_array(weight), original)


def test_consuming_export_writes_the_same_graph_and_weights(tmp_path: Path, data_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's export (weights moved out, markers traced, shape inference not given the markers) against the
    plain export of the same checkpoint."""
    cfg = load_config(data_paths(data_dir).config)
    crops = hamer.onnx_cache.check_crops(cfg)
    export_onnx(build_model(data_paths(data_dir))[0], cfg, tmp_path / "plain" / "hamer.onnx", crops)
    infer = torch._C._jit_pass_onnx_graph_shape_type_inference
    given = []  # the weights each whole-graph shape inference pass was given

    def recording(graph, params, opset):  # noqa: ANN001, ANN202
        given.append([v for v in params.values() if isinstance(v, torch.Tensor)])
        return infer(graph, params, opset)

    monkeypatch.setattr(torch._C, "_jit_pass_onnx_graph_shape_type_inference", recording)
    consumed = build_model(data_paths(data_dir))[0]
    write_onnx(consumed, cfg, tmp_path / "consumed" / "hamer.onnx", crops, consume=True)
    assert torch._C._jit_pass_onnx_graph_shape_type_inference is recording  # put back
    assert given and all(given)  # the passes ran, given weights
    assert not [w for weights in given for w in weights if 0 in w.stride() and w.numel() > 1]  # but no marker
    plain, light = (onnx.load(str(tmp_path / name / "hamer.onnx")) for name in ("plain", "consumed"))
    assert [n.SerializeToString() for n in light.graph.node] == [n.SerializeToString() for n in plain.graph.node]
    bare = [onnx.GraphProto(), onnx.GraphProto()]  # everything the graphs hold but their weights
    for graph, proto in zip(bare, (plain, light), strict=True):
        graph.CopyFrom(proto.graph)
        del graph.initializer[:]
    assert bare[0].SerializeToString() == bare[1].SerializeToString()
    assert light.graph.input == plain.graph.input and light.graph.output == plain.graph.output
    assert light.metadata_props == plain.metadata_props
    names = [t.name for t in plain.graph.initializer]
    assert [t.name for t in light.graph.initializer] == names
    transposed = 0
    for a, b in zip(plain.graph.initializer, light.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(b), numpy_helper.to_array(a), err_msg=a.name)
        transposed += a.name.startswith("onnx::MatMul")
    assert transposed > 10  # the folded transposes of linear weights were among them
    linear = [m.weight for m in consumed.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(w.stride() == (0, 1) for w in linear)  # the model's weights were handed over


# --- what identifies an entry ---


def test_checkpoint_replaced_in_place_with_same_size_and_mtime_gets_a_new_export(
        cache: Path, own_data: Path, tmp_path: Path, image: np.ndarray) -> None:
    ckpt = data_paths(own_data).checkpoint
    first = _network(HAMER(data_dir=own_data, task_paths={})).path.parent
    make_data_dir(tmp_path / "other", seed=5)
    other = data_paths(tmp_path / "other").checkpoint.read_bytes()
    before = ckpt.stat()
    assert len(other) == before.st_size and other != ckpt.read_bytes()
    with open(ckpt, "r+b") as f:  # in place: same inode
        f.write(other)
    os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = ckpt.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    replaced = HAMER(data_dir=own_data, task_paths={})
    assert _network(replaced).path.parent != first and first.is_dir()
    expected = _outputs(HAMER(data_dir=own_data, task_paths={}, backend="torch"), image)
    _assert_outputs_close(_outputs(replaced, image), expected)


def test_checkpoint_digest_is_remembered_by_inode_size_mtime_and_ctime(cache: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(os.urandom(3 * 2**20 + 5))
    true = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    index_path = cache / "checkpoints.json"
    assert checkpoint_digest(ckpt, index_path) == true
    index = json.loads(index_path.read_text())
    assert list(index.values()) == [true]
    planted = "0" * 64  # the index is trusted while the file's identity is unchanged: the file is not read again
    index_path.write_text(json.dumps({k: planted for k in index}))
    assert checkpoint_digest(ckpt, index_path) == planted
    ckpt.chmod(0o600)  # changes ctime only: hashed again
    assert checkpoint_digest(ckpt, index_path) == true
    copy = tmp_path / "copy.ckpt"
    shutil.copy2(ckpt, copy)  # another inode, same content: same digest, its own index entry
    assert checkpoint_digest(copy, index_path) == true and len(json.loads(index_path.read_text())) == 3
    for junk in ("not json", json.dumps([1, 2]), json.dumps({"a": "b"}), "{" * (2**20 + 1)):
        index_path.write_text(junk)
        assert checkpoint_digest(ckpt, index_path) == true


def test_every_field_of_the_cache_key_changes_the_entry(cache: Path, own_data: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    paths = data_paths(own_data)
    cfg = load_config(paths.config)
    base = cache_key(paths.checkpoint, cfg)
    copy = tmp_path / "copy.ckpt"
    shutil.copy(paths.checkpoint, copy)
    assert cache_key(copy, cfg) == base  # the content identifies the checkpoint, not its path
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 1
    copy.write_bytes(bytes(raw))
    keys = {"content": cache_key(copy, cfg)}
    changed = cfg.clone()
    changed.defrost()
    changed.EXTRA.FOCAL_LENGTH = float(cfg.EXTRA.FOCAL_LENGTH) + 1
    keys["config"] = cache_key(paths.checkpoint, changed)
    for name, module in (("torch", torch), ("onnxruntime", onnxruntime)):
        with monkeypatch.context() as patch:
            patch.setattr(module, "__version__", module.__version__ + ".other")
            keys[name] = cache_key(paths.checkpoint, cfg)
    with monkeypatch.context() as patch:
        patch.setattr(hamer.onnx_cache, "__version__", "0.0.0-other")
        keys["hamer"] = cache_key(paths.checkpoint, cfg)
    assert cache_key(paths.checkpoint, cfg) == base
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys


def test_torch_version_is_read_without_importing_torch_as_torch_gives_it() -> None:
    """The key's torch version, in a process without torch, is torch's own ``__version__`` (local part included,
    which the distribution's metadata lacks): keys made with torch loaded and without it are the same."""
    code = "import sys; from hamer.onnx_cache import torch_version; print(torch_version(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [torch.__version__, "False"]


@pytest.mark.parametrize("setting, env, xdg, expected", [
    ("configured", "from_env", "xdg", "configured"),
    (None, "from_env", "xdg", "from_env"),
    (None, "", "xdg", "xdg/hamer/onnx"),
    (None, None, "xdg", "xdg/hamer/onnx"),
    (None, None, None, "home/.cache/hamer/onnx"),
])
def test_cache_folder_precedence(tmp_path: Path, monkeypatch, setting, env, xdg, expected) -> None:
    monkeypatch.setattr(hamer.configs, "ONNX_CACHE_DIR", None if setting is None else tmp_path / setting)
    for var, value in (("HAMER_ONNX_CACHE", env), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(tmp_path / value) if value else "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / expected


# --- the first export: announced, light, skipped when memory is short ---


def test_first_export_is_announced_with_its_phases_and_a_hit_is_silent(cache: Path, data_dir: Path,
                                                                       caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hamer"):
        entry = _network(HAMER(data_dir=data_dir, task_paths={})).path.parent
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    announcement = messages[0]
    for part in ("exporting the network to ONNX", "fast CPU path", "once", "about", " s ", str(entry),
                 "backend='torch'", "--backend torch"):
        assert part in announcement, (part, announcement)
    phases = [m for m in messages if m.startswith("ONNX export ") and "/4:" in m]
    assert [p.split(":")[0] for p in phases] == [f"ONNX export {i}/4" for i in range(1, 5)]
    assert all("s so far" in p for p in phases) and "done in" in messages[-1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hamer"):
        assert isinstance(_network(HAMER(data_dir=data_dir, task_paths={})), OnnxRuntime)
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.parametrize("layout", ["ckpt_and_yaml", "safetensors", "ckpt_alone"])
def test_a_hit_loads_neither_torch_nor_the_checkpoint_where_the_config_is_readable_without_them(
        own_data: Path, tmp_path: Path, image: np.ndarray, layout: str) -> None:
    """HaMeR's data folder (model_config.yaml beside the checkpoint) or a safetensors checkpoint: a process that
    finds the export cached runs without importing torch, and gives this process's results exactly. A Lightning
    checkpoint without the yaml holds its config in its pickle: torch reads it, the same entry serves."""
    paths = data_paths(own_data)
    if layout == "safetensors":
        model, cfg = build_model(paths)
        save_safetensors(model, cfg, own_data / SAFETENSORS_FILE)
        paths.checkpoint.unlink()
    elif layout == "ckpt_alone":
        paths.config.unlink()
    here = HAMER(data_dir=own_data, task_paths={}).predict(image, BOXES)  # exports into the session's cache
    np.save(tmp_path / "image.npy", image)
    code = ("import sys, numpy as np; from hamer import HAMER; "
            f"r = HAMER(data_dir={str(own_data)!r}, task_paths={{}}).predict(np.load(sys.argv[1]), {BOXES!r}); "
            "np.save(sys.argv[2], np.concatenate([h.keypoints_3d for h in r.hands] + [h.cam_t[None] "
            "for h in r.hands])); print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "image.npy"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(layout == "ckpt_alone")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.concatenate(
        [h.keypoints_3d for h in here.hands] + [h.cam_t[None] for h in here.hands]))
    assert "export" not in run.stderr  # the cached entry served


def _meminfo(tmp_path: Path, available_kb: int) -> Path:
    path = tmp_path / f"meminfo_{available_kb}"
    path.write_text(f"MemTotal:       32000000 kB\nMemFree:          100000 kB\nMemAvailable:   {available_kb:>9} kB\n")
    return path


def test_short_memory_runs_torch_and_says_why(cache: Path, data_dir: Path, tmp_path: Path, image: np.ndarray,
                                              monkeypatch, caplog) -> None:
    size = data_paths(data_dir).checkpoint.stat().st_size
    needed = hamer.onnx_cache.EXPORT_MEMORY_PER_BYTE * size
    monkeypatch.setattr(hamer.onnx_cache, "CGROUP_ROOT", tmp_path / "no_cgroup")
    monkeypatch.setattr(hamer.onnx_cache, "MEMINFO", _meminfo(tmp_path, int(needed / 1024 / 2)))
    expected = _outputs(HAMER(data_dir=data_dir, task_paths={}, backend="torch"), image)
    with caplog.at_level(logging.WARNING, logger="hamer"):
        short = HAMER(data_dir=data_dir, task_paths={})
        got = _outputs(short, image)
    assert isinstance(short.reconstructor.network, TorchRuntime)
    for key, value in expected.items():  # the same torch path, bit for bit
        np.testing.assert_array_equal(got[key], value)
    warning = next(r.getMessage() for r in caplog.records if "not enough free memory" in r.getMessage())
    assert f"{needed / 1e9:.1f} GB" in warning and "MemAvailable" in warning and "torch" in warning
    assert not any(cache.glob("*/hamer.onnx"))  # nothing exported
    # enough MemAvailable, but a cgroup limit leaves less: torch again, naming the cgroup
    group = tmp_path / "cgroup"
    group.mkdir()
    (group / "memory.max").write_text(f"{int(needed) + 10_000}\n")
    (group / "memory.current").write_text("20000\n")
    monkeypatch.setattr(hamer.onnx_cache, "CGROUP_ROOT", group)
    monkeypatch.setattr(hamer.onnx_cache, "MEMINFO", _meminfo(tmp_path, int(100 * needed / 1024)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hamer"):
        assert isinstance(_network(HAMER(data_dir=data_dir, task_paths={})), TorchRuntime)
    assert "cgroup" in caplog.text and str(group) in caplog.text
    (group / "memory.max").write_text("max\n")  # no limit: the export runs
    assert isinstance(_network(HAMER(data_dir=data_dir, task_paths={})), OnnxRuntime)


def test_a_killed_exports_folder_is_removed_by_the_next_export(cache: Path, data_dir: Path, image: np.ndarray
                                                               ) -> None:
    host = socket.gethostname()
    entry = _network(HAMER(data_dir=data_dir, task_paths={})).path.parent  # its key, then exported again
    shutil.rmtree(entry)
    killed = cache / f".{entry.name}-{dead_pid()}@{host}-x1y2"  # a first run SIGKILLed mid-export
    running = cache / f".{entry.name}-{os.getpid()}@{host}-x3y4"  # an export under way (this process)
    elsewhere = cache / f".{entry.name}-{dead_pid()}@not-{host}-x5y6"  # on another host sharing the cache
    other = cache / f".{entry.name}0-{dead_pid()}@{host}-x7y8"  # another entry's
    for folder in (killed, running, elsewhere, other):
        folder.mkdir()
        (folder / "hamer.onnx.data").write_bytes(b"\0" * 1024)
    _outputs(HAMER(data_dir=data_dir, task_paths={}), image)
    assert not killed.exists()
    assert running.is_dir() and elsewhere.is_dir() and other.is_dir()
    assert (entry / "hamer.onnx").is_file()
    assert [p.name for p in cache.iterdir() if p.name.startswith(f".{entry.name}-") and p not in (
        running, elsewhere)] == []  # its own temporary folder is gone too


def test_a_second_first_run_waits_for_the_export_under_way_and_loads_it(cache: Path, data_dir: Path, image: np.ndarray,
                                                                        monkeypatch, caplog) -> None:
    """Two first loads at once (threads here: the export lock is a ``flock``, held per open file, so two threads
    contend for it as two processes do): one exports, held back until told; the other waits for it, then loads it."""
    exporting, go = threading.Event(), threading.Event()
    write_onnx = hamer.export.write_onnx

    def held_back(*args, **kwargs):
        exporting.set()
        assert go.wait(120)
        return write_onnx(*args, **kwargs)

    monkeypatch.setattr(hamer.export, "write_onnx", held_back)
    loaded: dict[str, HAMER] = {}

    def load(name: str) -> None:
        loaded[name] = HAMER(data_dir=data_dir, task_paths={})
        loaded[name].load()

    messages = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
    threads = [threading.Thread(target=load, args=(name,)) for name in ("first", "second")]
    with caplog.at_level(logging.WARNING, logger="hamer"):
        try:
            threads[0].start()
            assert exporting.wait(120)
            threads[1].start()
            deadline = time.monotonic() + 120  # until the second waits (or, without the lock, exports too)
            while sum(m.startswith("ONNX export 2/4") or "waiting for it" in m for m in messages()) < 2:
                assert time.monotonic() < deadline, messages()
                time.sleep(0.02)
        finally:
            go.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join(120)
    assert sum(m.startswith("First use of checkpoint") for m in messages()) == 1, messages()
    assert sum(f"another process (pid {os.getpid()} on {socket.gethostname()}, since " in m
               and ") is exporting checkpoint" in m
               and "waiting for it" in m for m in messages()) == 1, messages()
    assert not any("rejected" in m for m in messages()), messages()
    paths = {name: _network(h).path for name, h in loaded.items()}
    assert paths["first"] == paths["second"] and paths["first"].parent.parent == cache  # one entry, loaded by both
    _assert_outputs_close(_outputs(loaded["second"], image), _outputs(loaded["first"], image))
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no lock, no temporary folder left
