"""The default CPU path: the network through ONNX Runtime, from an export of the checkpoint cached on disk.

On CPU in fp32, ONNX Runtime runs the network faster than torch (benchmarks/results/bench.md). The first load of
a checkpoint exports it (``hamer.export.write_onnx``) into ``<cache>/<key>/hamer.onnx`` and keeps torch's outputs
on fixed check crops beside it (``check.npz``); every load, the first included, runs those crops through ONNX
Runtime and compares every output the graph gives with torch's, each within its tolerance (``tolerance``). An
entry that is incomplete, does not load or gives other outputs is rebuilt. An export is written in
``<cache>/.<key>-<pid>@<host>-*`` first, then renamed into place (an old entry renamed aside first, then removed);
the next export of that key removes such a folder whose process is gone. One process of a host exports a key at a
time (``<cache>/.<key>.lock``, :class:`hamer.pidlock.PidLock`): a second first run waits for it, then loads its
entry, rather than exporting too (twice the memory and the time).

``key`` hashes the checkpoint's content (sha256, computed once and remembered in ``<cache>/checkpoints.json``:
:mod:`hamer.checkpoint_digest`), the model config, and the torch (:func:`torch_version`), onnxruntime and hamer
versions. A hit (:func:`cached_runtime`) loads neither torch nor the checkpoint. The cache folder:
``hamer.configs.ONNX_CACHE_DIR``, else the environment variable ``HAMER_ONNX_CACHE``, else
``$XDG_CACHE_HOME/hamer/onnx``, else ``~/.cache/hamer/onnx``.

The export is announced (WARNING) when it starts, with its phases and their times. It runs only when the free
memory (``MemAvailable`` of ``MEMINFO``, or what the cgroup under ``CGROUP_ROOT`` leaves, if less) covers its
measured need (``EXPORT_MEMORY_PER_BYTE`` of the checkpoint's size); otherwise the caller runs torch, with a WARNING.
"""

from __future__ import annotations

import ast
import ctypes
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from yacs.config import CfgNode

from . import configs
from .checkpoint_digest import INDEX_FILE, checkpoint_digest
from .pidlock import LockBusy, PidLock, describe, holder_alive
from .sizes import format_bytes
from .version import __version__

if TYPE_CHECKING:
    from .models.hamer import HaMeRNet
    from .onnx_runtime import OnnxRuntime

log = logging.getLogger(__name__)

CACHE_ENV = "HAMER_ONNX_CACHE"
# Every output of the cached graph must match torch's on the check crops within tolerance(name) * max(1, max |torch
# output|): joints and vertices within 1e-6 m (they are under 1 m; measured 1.8e-7 m on the full-size model), the
# others within 1e-4 of their scale (measured at most 2.6e-5 on a random ViT-H-wide model: pred_cam_t, whose depth
# divides by the predicted scale).
JOINT_TOLERANCE_M = 1e-6
OUTPUT_TOLERANCE = 1e-4
# Settings read to decide whether the export fits in memory (tests point them at files of their own).
MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Memory the first load needs above the process's resident memory before it, per byte of checkpoint: 1.13 measured
# on the full-size model (2.68 GB checkpoint: peak 3.62 GB resident, 0.59 GB before; benchmarks/results/first_run.md;
# 1.2 for `hamer run`, MediaPipe included), with a margin. Its duration on a 2-core AMD EPYC with nothing else
# running: 45 s for 2.68 GB (17 s per GB); minutes while other jobs share the machine.
EXPORT_MEMORY_PER_BYTE = 1.4
EXPORT_SECONDS_PER_GB = 17.0
_CHECK_FILE = "check.npz"
_WAIT_POLL_S = 0.5  # how often a process waiting for another's export of the same entry looks again


class StaleEntryError(ValueError):
    """A cache entry that does not load or does not reproduce the torch outputs stored with it."""


def cache_dir() -> Path:
    """The cache folder (see the module docstring)."""
    if configs.ONNX_CACHE_DIR is not None:
        return Path(configs.ONNX_CACHE_DIR).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return configs.user_cache_dir() / "onnx"


def torch_version() -> str:
    """``torch.__version__`` without importing torch (1.2-1.5 s) when it is not loaded yet: the ``__version__``
    that torch's build writes in ``torch/version.py`` (read as text, never run), with its local part ("+cu130"),
    which the distribution's metadata lacks (that is the fallback)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    try:
        folder = importlib.util.find_spec("torch").submodule_search_locations[0]
        for node in ast.parse((Path(folder) / "version.py").read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant) and any(
                    isinstance(t, ast.Name) and t.id == "__version__"
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
                return str(node.value.value)
    except (AttributeError, IndexError, TypeError, OSError, SyntaxError, ValueError):
        pass
    return importlib.metadata.version("torch")


def cache_key(checkpoint: Path, cfg: CfgNode) -> str:
    """Hash of the checkpoint's content, the config and the torch, onnxruntime and hamer versions."""
    import onnxruntime

    identity = [checkpoint_digest(checkpoint, cache_dir() / INDEX_FILE), json.dumps(cfg, sort_keys=True),
                torch_version(), onnxruntime.__version__, __version__]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def check_crops(cfg: CfgNode) -> np.ndarray:
    """Two fixed crops (seeded noise of image statistics) the cached model is checked on."""
    size = int(cfg.MODEL.IMAGE_SIZE)
    return np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)


def tolerance(name: str) -> float:
    """The largest |ONNX Runtime - torch| allowed for output ``name``, relative to max(1, max |torch output|)."""
    return JOINT_TOLERANCE_M if name in ("pred_keypoints_3d", "pred_vertices") else OUTPUT_TOLERANCE


def output_mismatches(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Every output of ``got`` (the runtime's) off ``expected`` by more than its tolerance, or missing from it,
    or of another shape; and every expected output the runtime lacks. Empty when all match."""
    problems = [f"{name} missing from the runtime's outputs" for name in expected if name not in got]
    for name, value in got.items():
        ref = expected.get(name)
        if ref is None or ref.shape != value.shape:
            problems.append(f"{name}: shape {value.shape}, stored {None if ref is None else ref.shape}")
            continue
        error = float(np.abs(value.astype(np.float64) - ref).max(initial=0.0))
        allowed = tolerance(name) * max(1.0, float(np.abs(ref).max(initial=0.0)))
        if not error <= allowed:
            problems.append(f"{name} off by {error:.3g} (tolerance {allowed:.3g})")
    return problems


def _checked_runtime(entry: Path, crops: np.ndarray, device: str) -> OnnxRuntime:
    """The runtime of a cache entry whose outputs on ``crops`` match its stored torch outputs; StaleEntryError."""
    from .onnx_runtime import OnnxRuntime

    try:
        with np.load(entry / _CHECK_FILE, allow_pickle=False) as stored:
            expected = {k: stored[k] for k in stored.files}
        runtime = OnnxRuntime(entry / "hamer.onnx", device)
        got = runtime(crops)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise StaleEntryError(f"unusable ({exc})") from None
    problems = output_mismatches(got, expected)
    if problems:
        raise StaleEntryError("its outputs differ from the torch outputs stored with it: " + "; ".join(problems))
    return runtime


def available_memory() -> tuple[int, str] | None:
    """Bytes this process may still allocate, and where that figure comes from: ``MEMINFO``'s MemAvailable, or
    the cgroup's ``memory.max`` minus ``memory.current`` (under ``CGROUP_ROOT``) when lower; None if unknown."""
    found: list[tuple[int, str]] = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, f"MemAvailable in {MEMINFO}"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        relative = next((line[3:] for line in own if line.startswith("0::")), "/").strip("/")
    except OSError:
        relative = ""
    folder = CGROUP_ROOT / relative if (CGROUP_ROOT / relative / "memory.max").is_file() else CGROUP_ROOT
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit != "max":
            used = int((folder / "memory.current").read_text().strip())
            found.append((max(0, int(limit) - used), f"the memory limit of cgroup {folder}"))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _export_fits(checkpoint: Path) -> bool:
    """Whether the free memory covers the export's need; if not, a WARNING naming both figures."""
    needed = EXPORT_MEMORY_PER_BYTE * checkpoint.stat().st_size
    available = available_memory()
    if available is None or available[0] >= needed:
        return True
    log.warning("not enough free memory for the one-time ONNX export of %s: it needs about %.1f GB, %.1f GB is "
                "free (%s). Running the network with torch this time (slower; same outputs); the export is tried "
                "again on a later run. backend='torch' (CLI: --backend torch) skips it.", checkpoint, needed / 1e9,
                available[0] / 1e9, available[1])
    return False


def _release_freed_memory() -> None:
    """Collect garbage, then hand freed heap memory back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op): freed tensors the allocator keeps would otherwise stay resident while ONNX Runtime loads its copy."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _own_prefix(entry: Path) -> str:
    """The name's start of this process's temporary folders of ``entry`` (``.<key>-<pid>@<host>-``), which
    :func:`_remove_killed_exports` reads back."""
    return f".{entry.name}-{os.getpid()}@{socket.gethostname()}-"


def _remove_killed_exports(entry: Path) -> None:
    """Remove the temporary folders of ``entry``'s exports whose process was killed (``.<entry>-<pid>@<host>-*``,
    on this host, that pid gone): a killed first run left its 2.7 GB behind."""
    for folder in entry.parent.glob(f".{entry.name}-*@*-*"):
        pid, _, host = folder.name[len(entry.name) + 2:].rpartition("-")[0].partition("@")
        if pid.isdigit() and not holder_alive({"pid": int(pid), "host": host}):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a killed export", folder)


def _swap_in(tmp: Path, entry: Path) -> None:
    """Put the folder ``tmp`` in place of ``entry`` by renames only: an old entry is renamed aside (named as an
    export's temporary folder, so that a kill here leaves nothing :func:`_remove_killed_exports` misses), then
    removed; a reader never finds the path half removed."""
    aside = entry.parent / f"{_own_prefix(entry)}stale"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        aside = None
    try:
        os.rename(tmp, entry)
    except OSError:  # another host's process (no common lock) has just cached the same checkpoint: checked next
        if not entry.is_dir():
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _export_lock(entry: Path, checkpoint: Path) -> Iterator[None]:
    """Held while this process may export ``entry``: another process of this host exporting the same checkpoint
    is waited for (it holds the lock until its entry is in place or it died) rather than doubled, which would
    double the memory and the time."""
    lock = PidLock(entry.parent / f".{entry.name}.lock")
    told = False
    while True:
        try:
            lock.acquire()
            break
        except LockBusy as busy:
            if not told:
                log.warning("another process (%s) is exporting checkpoint %s to ONNX: waiting for it",
                            describe(busy.holder), checkpoint)
                told = True
            time.sleep(_WAIT_POLL_S)
    try:
        yield
    finally:
        lock.release()


def _build_entry(build: Callable[[], HaMeRNet], cfg: CfgNode, entry: Path, crops: np.ndarray,
                 checkpoint: Path, device: str) -> OnnxRuntime:
    """Export into a temporary folder, move it to ``entry`` in one rename, then check it; RuntimeError if off.

    The memory peak stays near one copy of the weights: torch's outputs are computed first, the model is exported
    consuming its weights (``write_onnx(consume=True)``) and freed before ONNX Runtime opens the file."""
    import torch

    from .export import write_onnx

    size = checkpoint.stat().st_size
    start = time.perf_counter()
    seconds = size / 1e9 * EXPORT_SECONDS_PER_GB
    log.warning("First use of checkpoint %s: exporting the network to ONNX, once, for the fast CPU path (ONNX "
                "Runtime runs it faster than torch). This takes about %s for this %s checkpoint (%.0f s per GB "
                "on 2 free cores; longer on a busy machine) and about %s of memory; the export is cached in %s "
                "and later runs start in seconds. backend='torch' (CLI: --backend torch) skips it.", checkpoint,
                f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(seconds, 1):.0f} s", format_bytes(size),
                EXPORT_SECONDS_PER_GB, format_bytes(int(size * EXPORT_MEMORY_PER_BYTE)), entry)

    def phase(number: int, what: str) -> None:
        log.warning("ONNX export %d/4: %s (%.0f s so far)", number, what, time.perf_counter() - start)

    _remove_killed_exports(entry)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=_own_prefix(entry)))
    try:
        phase(1, "loading the checkpoint and running torch on 2 check crops")
        model = build()
        with torch.inference_mode():
            expected = {k: v.float().numpy() for k, v in model(torch.from_numpy(crops)).items()}
        np.savez(tmp / _CHECK_FILE, **expected)
        phase(2, "tracing the network (torch.onnx.export)")
        write_onnx(model, cfg, tmp / "hamer.onnx", crops, consume=True,
                   on_saving=lambda: phase(3, f"writing the weights to {entry / 'hamer.onnx.data'}"))
        del model
        _release_freed_memory()  # the weights go before ONNX Runtime reads its copy
        _swap_in(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    phase(4, "checking every output of ONNX Runtime against torch's")
    try:
        runtime = _checked_runtime(entry, crops, device)
    except StaleEntryError as exc:
        shutil.rmtree(entry, ignore_errors=True)
        raise RuntimeError(f"the ONNX export of {checkpoint} is off: {exc}; use backend='torch'") from None
    log.warning("ONNX export done in %.0f s, cached in %s (once per checkpoint)", time.perf_counter() - start, entry)
    return runtime


def _applies(device: str, precision: str) -> bool:
    """Whether the cache serves the network on ``device`` in ``precision``: CPU, fp32, onnxruntime installed."""
    if device.split(":")[0] != "cpu" or precision != "fp32":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cached_runtime(cfg: CfgNode, checkpoint: Path, device: str, precision: str) -> OnnxRuntime | None:
    """The runtime of the cache's entry for ``checkpoint`` and ``cfg`` when the cache serves ``device`` and
    ``precision`` and the entry is there and checks out: no torch, no export. Else None, and
    :func:`default_runtime` exports it (or reports the entry it rejects)."""
    if not _applies(device, precision):
        return None
    entry = cache_dir() / cache_key(checkpoint, cfg)
    if _identity(entry) is None:
        return None
    try:
        runtime = _checked_runtime(entry, check_crops(cfg), device)
    except StaleEntryError:
        return None
    log.info("running the network with ONNX Runtime from %s (backend='torch' for torch)", entry)
    return runtime


def default_runtime(build: Callable[[], HaMeRNet], cfg: CfgNode, checkpoint: Path, device: str,
                    precision: str) -> OnnxRuntime | None:
    """The runtime ``HAMER(backend="auto")`` uses: ONNX Runtime on the cached export on CPU in fp32 when
    onnxruntime is installed, exported now if the cache has no usable entry; None otherwise, or when the export
    does not fit in memory (the caller then runs torch). ``build``: the torch model of ``checkpoint``, called only
    to export it (a hit needs no torch model); the export frees its weights, so it must not be shared."""
    if not _applies(device, precision):
        return None
    entry = cache_dir() / cache_key(checkpoint, cfg)
    crops = check_crops(cfg)
    seen = _identity(entry)
    runtime = _cached_runtime(entry, crops, device) if seen is not None else None
    if runtime is None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _export_lock(entry, checkpoint):
            if _identity(entry) not in (None, seen):  # another process's export, waited for
                runtime = _cached_runtime(entry, crops, device)
            if runtime is None:
                if not _export_fits(checkpoint):
                    return None
                runtime = _build_entry(build, cfg, entry, crops, checkpoint, device)
    log.info("running the network with ONNX Runtime from %s (backend='torch' for torch)", entry)
    return runtime


def _identity(entry: Path) -> tuple[int, int] | None:
    """Which export ``entry`` holds (its check file's inode and modification time), None if none."""
    try:
        stat = (entry / _CHECK_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _cached_runtime(entry: Path, crops: np.ndarray, device: str) -> OnnxRuntime | None:
    """The runtime of ``entry`` if it checks out, else None (a rejected entry is logged)."""
    try:
        return _checked_runtime(entry, crops, device)
    except StaleEntryError as exc:
        log.warning("ONNX cache entry %s rejected, %s: rebuilding it", entry, exc)
        return None
