"""ONNX export of the whole network (backbone, MANO head and MANO layer); 8-bit copies: ``hamer.quantize``.

The graph maps ``crops`` (N, 3, 256, 256) float32 normalized crops, N dynamic, to the outputs of
:class:`~hamer.models.hamer.HaMeRNet` (names and shapes in ``OUTPUT_NAMES``; left hands still mirrored), so the
file alone gives joints. The model config travels as JSON in the file's ``metadata_props`` (``hamer_config``), so
:class:`~hamer.runtime.OnnxRuntime` needs no checkpoint. The weights go to one external data file
``<name>.onnx.data`` beside the model: needed over protobuf's 2 GB (ViT-H is 2.7 GB), and ONNX Runtime then maps
them instead of holding the parsed protobuf too (0.5 GB less at load for the 0.7 GB int8 model).

The TorchScript exporter is used: the dynamo exporter cannot trace smplx's skinning loop (it indexes with a tensor
of joint parents), while tracing folds that loop into a static graph.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from .configs import CONFIG_METADATA_KEY, FACES_METADATA_KEY, PathLike
from .models.hamer import OUTPUT_NAMES, HaMeRNet
from .outputs import give_default_permissions
from .runtime import ONNX_INPUT, OnnxRuntime, TorchRuntime

log = logging.getLogger(__name__)

OPSET = 17
# Largest |onnxruntime - torch| allowed at export, relative to each output's scale max(1, max |torch output|).
# Measured in fp32 on the full-size (ViT-H) random model: at most 1.2e-5 (hand_pose rotations; joints 1.8e-7 m,
# cam_t 1.5e-6 relative). 1e-3 leaves ~100x margin for other CPUs' kernels and trained weights' larger
# activations; a broken graph (wrong op, batch size baked in) is off by 1e-2 or more.
EXPORT_TOLERANCE = 1e-3


class _TupleOutputs(nn.Module):
    """The network with its outputs as a tuple in ``OUTPUT_NAMES`` order (what the ONNX exporter needs)."""

    def __init__(self, net: HaMeRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(crops)
        return tuple(out[name] for name in OUTPUT_NAMES)


def export_onnx(model: HaMeRNet, cfg: CfgNode, path: PathLike, crops: np.ndarray) -> float:
    """Export ``model`` to ``path``, then check it with ONNX Runtime on ``crops`` against torch (fp32).

    Args:
        model: the network (fp32, any device); exported as is.
        cfg: its config, stored in the file's metadata.
        path: the ``.onnx`` file to write (graph); the weights go to ``<path>.data``.
        crops: (N, 3, 256, 256) float32 normalized crops to trace and check with.
    Returns:
        The largest difference relative to its output's scale (see ``EXPORT_TOLERANCE``).
    Raises:
        RuntimeError: an output differs by more than ``EXPORT_TOLERANCE``; the file is left for inspection.
    """
    import onnx

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(device)
    # trace with at least 2 crops so that nothing specializes on a batch of one
    trace_x = x if len(x) > 1 else x.expand(2, -1, -1, -1)
    dynamic = {name: {0: "batch"} for name in (ONNX_INPUT, *OUTPUT_NAMES)}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        traced = Path(tmp) / "traced.onnx"  # over 2 GB the exporter writes one file per tensor beside it
        with torch.no_grad(), warnings.catch_warnings():
            # smplx's Python-side shape logic and unfoldable slices: benign here, and the export is checked below
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            torch.onnx.export(_TupleOutputs(model).eval(), (trace_x,), str(traced), input_names=[ONNX_INPUT],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False)
        proto = onnx.load(str(traced))
    faces = model.mano.faces_tensor.cpu().tolist()
    onnx.helper.set_model_props(proto, {CONFIG_METADATA_KEY: json.dumps(cfg), FACES_METADATA_KEY: json.dumps(faces)})
    data = _data_file(path)
    data.unlink(missing_ok=True)  # onnx would append to it
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    give_default_permissions(data)
    del proto
    log.info("exported ONNX model %s in %.1f s", path, time.perf_counter() - start)
    return _check_export(model, path, x)


def _data_file(path: Path) -> Path:
    """The external data file of ``path``: ``<name>.onnx.data`` beside it (also onnxruntime's naming)."""
    return path.with_name(path.name + ".data")


def _check_export(model: HaMeRNet, path: Path, x: torch.Tensor) -> float:
    """Largest scaled ONNX Runtime (CPU) - torch difference over all outputs; RuntimeError above tolerance."""
    with torch.inference_mode():
        reference = {k: v.float().cpu().numpy() for k, v in model(x).items()}
    onnx_out = OnnxRuntime(path, torch.device("cpu"))(x.cpu().numpy())
    errors = {k: float(np.abs(onnx_out[k] - ref).max()) / max(1.0, float(np.abs(ref).max()))
              for k, ref in reference.items()}
    worst = max(errors, key=errors.get)
    log.info("ONNX Runtime vs torch on %d crop(s): largest scaled difference %.2e (%s); joints %.2e m",
             len(x), errors[worst], worst, np.abs(onnx_out["pred_keypoints_3d"] - reference["pred_keypoints_3d"]).max())
    if errors[worst] > EXPORT_TOLERANCE:
        raise RuntimeError(f"exported ONNX model {path} differs from torch: {worst} off by {errors[worst]:.2e} "
                           f"(tolerance {EXPORT_TOLERANCE:.0e}); all: {errors}")
    return errors[worst]


class ExportOnFirstCall:
    """A torch runtime that exports its network to ``path`` on its first call (with that call's crops), then runs."""

    def __init__(self, runtime: TorchRuntime, cfg: CfgNode, path: PathLike) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.path: Path | None = Path(path)
        self.faces = runtime.faces

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """As :meth:`TorchRuntime.__call__`; the first call exports (and checks) first."""
        if self.path is not None:
            export_onnx(self.runtime.model, self.cfg, self.path, inputs)
            self.path = None
        return self.runtime(inputs)
