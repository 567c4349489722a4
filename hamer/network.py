"""Model options -> the network: the one place that loads HaMeR's network for ``HAMER`` and the corpus engines.

:func:`load_network` gives the runtime that maps (N, 3, 256, 256) float32 crops to the network's outputs (torch,
ONNX Runtime on the file given, or with backend "auto" on CPU in fp32 ONNX Runtime on a cached export), and its
config; :func:`load_reconstructor` wraps it into the :class:`~hamer.pipeline.Reconstructor` that turns detected
hands into reconstructed ones. torch is imported only when needed: not for a given ``.onnx`` file, nor for a hit
of the export cache whose config is readable without it (``model_config.yaml`` beside the checkpoint, as in
HaMeR's data folder, or a safetensors checkpoint).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from yacs.config import CfgNode

from . import configs
from .checkpoint_config import config_without_torch, require_checkpoint
from .model_options import ModelOptions
from .pipeline import Reconstructor

log = logging.getLogger(__name__)


def load_network(model: ModelOptions, device: str, export_onnx: configs.PathLike | None = None
                 ) -> tuple[Any, CfgNode]:
    """The network runtime of ``model`` on ``device`` (from :meth:`ModelOptions.check`) and its config.
    ``export_onnx``: torch backend: the runtime writes the network to this ``.onnx`` path on its first call.
    OSError, ValueError, KeyError or RuntimeError when it cannot be loaded."""
    from .onnx_cache import cached_runtime
    from .onnx_runtime import OnnxRuntime

    start = time.perf_counter()
    if model.backend == "onnx":
        runtime = OnnxRuntime(model.onnx, device)
        log.info("HaMeR loaded from %s (ONNX Runtime) in %.1f s", model.onnx, time.perf_counter() - start)
        return runtime, runtime.cfg
    paths = configs.data_paths(model.data, model.checkpoint)
    require_checkpoint(paths)
    auto = model.backend == "auto" and export_onnx is None
    cfg = config_without_torch(paths) if auto else None
    runtime = None if cfg is None else cached_runtime(cfg, paths.checkpoint, device, model.precision)
    if runtime is not None:
        log.info("HaMeR loaded from %s in %.1f s", paths.checkpoint, time.perf_counter() - start)
        return runtime, cfg
    from .checkpoint import build_model, load_checkpoint, read_checkpoint
    from .torch_runtime import TorchRuntime

    read = read_checkpoint(paths)
    cfg = read[1]
    if auto:
        from .onnx_cache import default_runtime

        # the export's model reads its weights into memory (not mapped), so that it can free them as it goes
        runtime = default_runtime(lambda: build_model(paths, (load_checkpoint(paths.checkpoint, mmap=False),
                                                              cfg))[0], cfg, paths.checkpoint, device,
                                  model.precision)
    if runtime is None:
        runtime = TorchRuntime(build_model(paths, read)[0], device, model.precision)
    if export_onnx is not None:
        from .export import ExportOnFirstCall

        runtime = ExportOnFirstCall(runtime, cfg, export_onnx)
    log.info("HaMeR loaded from %s in %.1f s", paths.checkpoint, time.perf_counter() - start)
    return runtime, cfg


def load_reconstructor(model: ModelOptions, device: str | None = None,
                       export_onnx: configs.PathLike | None = None) -> Reconstructor:
    """The :class:`Reconstructor` of ``model`` (its network loaded now; ``device``: from ``model.check()``, which
    is called when it is None). ValueError for options that cannot work, else as :func:`load_network`."""
    if device is None:
        device = model.check()
    return Reconstructor(*load_network(model, device, export_onnx), float(model.rescale_factor), model.camera)
