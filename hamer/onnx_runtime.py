"""The HaMeR network through ONNX Runtime: sessions on exported files (``hamer.export``) and their metadata.

No torch here: a run on a cached or given ``.onnx`` file never imports it. Devices are named as torch names them
("cpu", "cuda", "cuda:1").
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from yacs.config import CfgNode

from .configs import CONFIG_METADATA_KEY, FACES_METADATA_KEY, PathLike, config_from_json
from .models import OUTPUT_NAMES

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

ONNX_INPUT = "crops"


def intra_op_threads() -> int:
    """ONNX Runtime's intra-op threads: torch's when torch is loaded (so ``torch.set_num_threads`` holds for both),
    else ``OMP_NUM_THREADS`` when it is a positive integer, else 0: ONNX Runtime's default, one per physical core
    (torch's default too)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device``: CUDA first when asked for and available, CPU always."""
    import onnxruntime as ort

    if device.split(":")[0] == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("device %s asked for, but this onnxruntime has no CUDAExecutionProvider: running on CPU", device)
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, device: str) -> ort.InferenceSession:
    """An ONNX Runtime session on ``path``: all graph optimizations, threads from :func:`intra_op_threads`.

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
    options.intra_op_num_threads = intra_op_threads()
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

    def __init__(self, path: PathLike, device: str = "cpu") -> None:
        self.path = Path(path).expanduser()
        self.session = onnx_session(self.path, device)
        self.cfg = onnx_config(self.session, self.path)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.faces = onnx_faces(self.session, self.path)

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, 256, 256) float32 normalized crops -> network outputs (:data:`OUTPUT_NAMES`), float32 numpy."""
        outputs = self.session.run(None, {ONNX_INPUT: np.ascontiguousarray(inputs, dtype=np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))
