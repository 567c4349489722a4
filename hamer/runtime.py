"""Running the HaMeR network on a batch of normalized crops: the torch backend and the ONNX Runtime backend."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from yacs.config import CfgNode

from .configs import CONFIG_METADATA_KEY, FACES_METADATA_KEY, PRECISIONS, PathLike, config_from_json
from .models import OUTPUT_NAMES

if TYPE_CHECKING:
    import onnxruntime as ort

    from .models.hamer import HaMeRNet

log = logging.getLogger(__name__)

ONNX_INPUT = "crops"


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16/AMX, or AVX-512 conversions); else bf16 is slow."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError for a precision other than :data:`PRECISIONS`, or fp16 on a device other than CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here ("cpu", "cuda", "cuda:1", "mps", "xpu", ...); ValueError naming the problem."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.mps, torch.xpu ...
    if backend is None or not hasattr(backend, "is_available"):
        raise ValueError(f"unsupported device {device!r}")
    if not backend.is_available():
        raise ValueError(f"device {device!r} requested but {dev.type} is not available (torch {torch.__version__})")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {device!r} requested but only {count} {dev.type} device(s)")
    return dev


class TorchRuntime:
    """The network on a torch device. ``precision``: "fp32" (default), "bf16" (autocast), "fp16" (autocast, CUDA)."""

    def __init__(self, model: HaMeRNet, device: torch.device, precision: str = "fp32") -> None:
        check_precision(precision, device)
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("this CPU has no bf16 kernels (no AVX-512): bf16 runs several times slower than fp32")
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision
        self.faces = model.mano.faces_tensor.cpu().numpy()  # (1538, 3) MANO triangles, for mesh outputs

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, 256, 256) float32 normalized crops -> network outputs as float32 numpy arrays."""
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime providers for ``device``: CUDA first when asked for and available, CPU always."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("device %s asked for, but this onnxruntime has no CUDAExecutionProvider: running on CPU", device)
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, device: torch.device) -> ort.InferenceSession:
    """An ONNX Runtime session on ``path``: all graph optimizations, one intra-op thread per torch thread (cores).

    FileNotFoundError when the file is missing, ValueError when ONNX Runtime cannot read it.
    """
    if path.is_dir():
        raise ValueError(f"ONNX model {path} is a folder, not an .onnx file")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    import onnxruntime as ort  # imported on first use
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    load_errors = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.InvalidArgument,
                   ort_errors.NoSuchFile, ort_errors.NotImplemented, RuntimeError)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: ORT warns about every constant-folded shape node
    try:
        return ort.InferenceSession(str(path), options, providers=onnx_providers(device))
    except load_errors as exc:
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from None


def onnx_config(session: ort.InferenceSession, path: Path) -> CfgNode:
    """The model config that :func:`hamer.export.export_onnx` stored in the file's metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if CONFIG_METADATA_KEY not in meta:
        raise ValueError(f"ONNX model {path} has no '{CONFIG_METADATA_KEY}' metadata: not exported by hamer.export")
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [ONNX_INPUT]:
        raise ValueError(f"ONNX model {path} takes inputs {inputs}, expected ['{ONNX_INPUT}']")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != list(OUTPUT_NAMES):
        raise ValueError(f"ONNX model {path} gives outputs {outputs}, expected {list(OUTPUT_NAMES)}: "
                         "not a HaMeR graph from hamer.export")
    cfg = config_from_json(meta[CONFIG_METADATA_KEY], f"ONNX model {path} (metadata '{CONFIG_METADATA_KEY}')")
    size = int(cfg.MODEL.IMAGE_SIZE)
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != [3, size, size]:
        raise ValueError(f"ONNX model {path} takes crops of shape {shape}, but its config says (N, 3, {size}, {size})")
    return cfg


def onnx_faces(session: ort.InferenceSession, path: Path) -> np.ndarray | None:
    """MANO's (1538, 3) triangles stored by :func:`hamer.export.export_onnx` (None in older files)."""
    text = session.get_modelmeta().custom_metadata_map.get(FACES_METADATA_KEY)
    if text is None:
        return None
    try:
        faces = np.array(json.loads(text), dtype=np.int64)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"ONNX model {path}: metadata '{FACES_METADATA_KEY}' is not a list of triangles "
                         f"({exc})") from None
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min(initial=0) < 0 or faces.max(initial=0) >= 778:
        raise ValueError(f"ONNX model {path}: metadata '{FACES_METADATA_KEY}' is not MANO's triangles")
    return faces


class OnnxRuntime:
    """The exported network (``hamer.export``) through ONNX Runtime; ``cfg`` is the config stored in the file.

    One session for the object's life. The file alone suffices: no checkpoint, no MANO pickle.
    """

    def __init__(self, path: PathLike, device: torch.device) -> None:
        self.path = Path(path).expanduser()
        self.session = onnx_session(self.path, device)
        self.cfg = onnx_config(self.session, self.path)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.faces = onnx_faces(self.session, self.path)

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, 256, 256) float32 normalized crops -> network outputs (:data:`OUTPUT_NAMES`), float32 numpy."""
        outputs = self.session.run(None, {ONNX_INPUT: np.ascontiguousarray(inputs, dtype=np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))
