"""The default CPU path: the network through ONNX Runtime, from an export of the checkpoint cached on disk.

On CPU in fp32, ONNX Runtime runs the network faster than torch (benchmarks/results/bench.md). The first load of
a checkpoint exports it (``hamer.export.export_onnx``) into ``<cache>/<key>/hamer.onnx``, checks it against torch
and keeps torch's outputs on fixed check crops beside it; later loads reuse it after running those crops again and
comparing. ``key`` hashes the checkpoint's resolved path, size and modification time, the model config, and the
torch, onnxruntime and hamer versions, so a changed checkpoint gets a new export. An entry that is incomplete, does
not load or gives other outputs is deleted and rebuilt. The cache folder: ``hamer.configs.ONNX_CACHE_DIR``, else
the environment variable ``HAMER_ONNX_CACHE``, else ``$XDG_CACHE_HOME/hamer/onnx`` (``~/.cache/hamer/onnx``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from yacs.config import CfgNode

from . import configs
from .version import __version__

if TYPE_CHECKING:
    from .models.hamer import HaMeRNet

log = logging.getLogger(__name__)

CACHE_ENV = "HAMER_ONNX_CACHE"
# The cached model must give torch's joints and vertices within this many metres (1e-3 mm); measured 1.8e-7 m on
# the full-size model, 1e-8 m on the small one.
JOINT_TOLERANCE_M = 1e-6
_CHECK_FILE = "check.npz"
_CHECKED = ("pred_keypoints_3d", "pred_vertices")


def cache_dir() -> Path:
    """The cache folder (see the module docstring)."""
    if configs.ONNX_CACHE_DIR is not None:
        return Path(configs.ONNX_CACHE_DIR).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hamer" / "onnx"


def cache_key(checkpoint: Path, cfg: CfgNode) -> str:
    """Hash of the checkpoint's identity (resolved path, size, mtime), the config and the library versions."""
    import onnxruntime

    stat = checkpoint.stat()
    identity = [str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns, json.dumps(cfg, sort_keys=True),
                torch.__version__, onnxruntime.__version__, __version__]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def check_crops(cfg: CfgNode) -> np.ndarray:
    """Two fixed crops (seeded noise of image statistics) the cached model is checked on."""
    size = int(cfg.MODEL.IMAGE_SIZE)
    return np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)


def _matches(runtime, expected: dict[str, np.ndarray], crops: np.ndarray) -> float:
    """Largest |difference| (metres) over the checked outputs."""
    got = runtime(crops)
    return max(float(np.abs(got[k] - expected[k]).max()) for k in _CHECKED)


def _open_entry(entry: Path, crops: np.ndarray, device: torch.device):
    """The runtime of a complete cache entry that reproduces its stored outputs, else None."""
    from .runtime import OnnxRuntime

    try:
        with np.load(entry / _CHECK_FILE) as stored:
            expected = {k: stored[k] for k in _CHECKED}
        runtime = OnnxRuntime(entry / "hamer.onnx", device)
        error = _matches(runtime, expected, crops)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        log.warning("ONNX cache entry %s is unusable (%s): rebuilding it", entry, exc)
        return None
    if not error <= JOINT_TOLERANCE_M:
        log.warning("ONNX cache entry %s is off by %.2e m from the torch outputs it stored: rebuilding it",
                    entry, error)
        return None
    return runtime


def _build_entry(model: HaMeRNet, cfg: CfgNode, entry: Path, crops: np.ndarray) -> None:
    """Export into a temporary folder, check to ``JOINT_TOLERANCE_M``, then move it to ``entry`` in one rename."""
    from .export import export_onnx
    from .runtime import OnnxRuntime

    start = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
    try:
        export_onnx(model, cfg, tmp / "hamer.onnx", crops)
        with torch.inference_mode():
            expected = {k: model(torch.from_numpy(crops))[k].float().numpy() for k in _CHECKED}
        error = _matches(OnnxRuntime(tmp / "hamer.onnx", torch.device("cpu")), expected, crops)
        if not error <= JOINT_TOLERANCE_M:
            raise RuntimeError(f"the ONNX export differs from torch by {error:.2e} m (joints/vertices; tolerance "
                               f"{JOINT_TOLERANCE_M:.0e} m): use backend='torch'")
        np.savez(tmp / _CHECK_FILE, **expected)
        shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process has just cached the same checkpoint: its entry is checked on opening
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached the ONNX export of the checkpoint in %s (%.0f s, once per checkpoint)", entry,
             time.perf_counter() - start)


def default_runtime(build: Callable[[], HaMeRNet], cfg: CfgNode, checkpoint: Path, device: torch.device,
                    precision: str):
    """The runtime ``HAMER(backend="auto")`` uses: ONNX Runtime on the cached export on CPU in fp32 when
    onnxruntime is installed; None otherwise (the caller then runs torch). ``build``: the torch model of
    ``checkpoint``, called only to export it when the cache has no usable entry (a hit needs no torch model)."""
    if device.type != "cpu" or precision != "fp32":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    entry = cache_dir() / cache_key(checkpoint, cfg)
    crops = check_crops(cfg)
    runtime = _open_entry(entry, crops, device) if (entry / _CHECK_FILE).is_file() else None
    if runtime is None:
        _build_entry(build(), cfg, entry, crops)
        runtime = _open_entry(entry, crops, device)
        if runtime is None:
            raise RuntimeError(f"the ONNX export just written to {entry} does not reproduce torch: use backend='torch'")
    log.info("running the network with ONNX Runtime from %s (backend='torch' for torch)", entry)
    return runtime
