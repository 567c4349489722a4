"""8-bit models: static, per-channel quantization of an exported model, calibrated on hand crops, error measured.

``onnxruntime.quantization.quantize_static`` (QDQ format) quantizes the constant-weight MatMuls of the ViT and the
MANO head: int8 weights per output channel, uint8 activations with ranges calibrated (min/max) on real hand
crops. The layers that carry the error stay fp32 (``FP32_NODES``, found by measurement: see docs/QUANTIZATION.md):
the MANO head and the MANO layer; so do the attention products, the patch embedding and LayerNorms. The joint
error of the result against the fp32 file is then measured on the same crops, and no file is written above
``max_error_mm``: the error depends on the weights, so it is measured on the user's own.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .configs import CONFIG_METADATA_KEY, PathLike
from .outputs import give_default_permissions

log = logging.getLogger(__name__)

DEFAULT_MAX_ERROR_MM = 1.0
# Node-name patterns (regular expressions on the exported graph's names) kept in fp32: the MANO layer and the MANO
# head. Measured on the full-size random model (docs/QUANTIZATION.md): the head is <1% of the FLOPs but quantizing
# it adds ~2 mm (8.4 -> 6.2 mm max with it in fp32); the ViT's error is spread over all its layers.
FP32_NODES = (r"^/net/mano/", r"^/net/mano_head/")


class QuantizationError(RuntimeError):
    """The quantized model's joints are further from fp32 than allowed; ``report`` holds the measurement."""

    def __init__(self, message: str, report: QuantizationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantizationReport:
    """Joint error of the 8-bit model against fp32 on the calibration crops (3D joints, mm)."""

    path: Path
    max_mm: float
    mean_mm: float
    crops: int
    fp32_nodes: int
    seconds: float


def calibration_crops(images: Iterable[PathLike], cfg, rescale_factor: float = 2.0) -> np.ndarray:
    """Network inputs (N, 3, 256, 256) float32 for every hand MediaPipe finds in ``images`` (image files).

    The crops are made as ``HAMER.process_with_mediapipe`` makes them (left hands mirrored). ValueError when an
    image cannot be read or no hand is found in any.
    """
    from .detection import HandDetector
    from .images import read_image
    from .pipeline import make_inputs

    batches = []
    with HandDetector() as detector:
        for path in images:
            img = read_image(path)
            if img is None:
                raise ValueError(f"cannot read the image {path}")
            detections = detector.detect(img)
            if detections:
                boxes = np.stack([d.box for d in detections]).astype(np.float32)
                rights = np.array([d.label == "Right" for d in detections])
                batches.append(make_inputs(img, boxes, rights, cfg, rescale_factor)[0])
    if not batches:
        raise ValueError("MediaPipe found no hand in the calibration images")
    return np.concatenate(batches)


def image_files(folder: PathLike) -> list[Path]:
    """The image files in ``folder``, sorted; ValueError when it is not a folder or holds none."""
    from .images import IMAGE_SUFFIXES

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no image files")
    return files


@contextmanager
def _ort_logging_to(logger: logging.Logger) -> Iterator[None]:
    """Route what onnxruntime.quantization logs on the root logger to ``logger`` at INFO at most (its warnings are
    advice for other models, e.g. to pre-process), and keep ``logging.info``'s implicit ``basicConfig`` from
    configuring the user's root logger."""
    root = logging.getLogger()

    def redirect(record: logging.LogRecord) -> bool:
        if record.name == "root" and "onnxruntime" in record.pathname:
            logger.log(min(record.levelno, logging.INFO), "onnxruntime.quantization: %s", record.getMessage())
            return False
        return True

    guard = logging.NullHandler()
    root.addFilter(redirect)
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeFilter(redirect)
        root.removeHandler(guard)


def _graph(src: Path):
    """The graph of ``src`` without its weights; ValueError when it is not from ``hamer.export``."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False)
    if CONFIG_METADATA_KEY not in {p.key for p in graph.metadata_props}:
        raise ValueError(f"{src} has no '{CONFIG_METADATA_KEY}' metadata: not exported by hamer.export")
    return graph


def _fp32_nodes(graph, patterns: Iterable[str]) -> list[str]:
    compiled = [re.compile(p) for p in patterns]
    return [n.name for n in graph.graph.node if any(p.search(n.name) for p in compiled)]


def _calibrate(src: Path, graph, crops: np.ndarray):
    """Min/max of every MatMul's activations on ``crops`` (one crop at a time), as onnxruntime's MinMax
    calibrator computes them, but holding the weights once: the graph with those activations as extra outputs is
    written beside ``src`` (so that it reads ``src``'s weight file) and run with ONNX Runtime."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    from .runtime import ONNX_INPUT, onnx_session

    constants = {i.name for i in graph.graph.initializer}
    constants |= {o for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
    tensors = list(dict.fromkeys(t for n in graph.graph.node if n.op_type == "MatMul"
                                 for t in (*n.input, *n.output) if t and t not in constants))
    outputs = {o.name for o in graph.graph.output}
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    with tempfile.NamedTemporaryFile(dir=src.parent, prefix=f".{src.stem}-calibration-", suffix=".onnx") as tmp:
        onnx.save_model(graph, tmp.name)
        session = onnx_session(Path(tmp.name), torch.device("cpu"))
        names = [o.name for o in session.get_outputs()]
        for i in range(len(crops)):
            for name, value in zip(names, session.run(None, {ONNX_INPUT: crops[i:i + 1]}), strict=True):
                if name in low and value.dtype == np.float32 and value.size:
                    low[name] = min(low[name], float(value.min()))
                    high[name] = max(high[name], float(value.max()))
        del session
    ranges = {t: (np.array([low[t]], np.float32), np.array([high[t]], np.float32)) for t in tensors
              if np.isfinite(low[t])}
    return TensorsData(CalibrationMethod.MinMax, ranges)


def _joints(path: Path, crops: np.ndarray) -> np.ndarray:
    """3D joints (N, 21, 3) of the file at ``path`` on ``crops``, one crop at a time (bounded memory)."""
    from .runtime import OnnxRuntime

    runtime = OnnxRuntime(path, torch.device("cpu"))
    return np.concatenate([runtime(crops[i:i + 1])["pred_keypoints_3d"] for i in range(len(crops))])


def quantize_onnx(src: PathLike, dst: PathLike, crops: np.ndarray, max_error_mm: float = DEFAULT_MAX_ERROR_MM,
                  fp32_nodes: Iterable[str] = FP32_NODES) -> QuantizationReport:
    """Write an 8-bit copy of the exported model ``src`` to ``dst`` (weights in ``<dst>.data``), calibrated on
    ``crops`` ((N, 3, 256, 256) normalized hand crops, e.g. from :func:`calibration_crops`).

    ``fp32_nodes``: node-name patterns kept in fp32. The metadata (config) is kept, so ``dst`` runs with
    ``HAMER(backend="onnx", onnx_path=dst)``. Returns the joint error against ``src`` on ``crops``.

    Raises:
        QuantizationError: the largest joint error exceeds ``max_error_mm``; nothing is written.
        FileNotFoundError / ValueError: ``src`` missing or not from ``hamer.export``; ``crops`` empty.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model not found: {src}")
    crops = np.ascontiguousarray(crops, dtype=np.float32)
    if crops.ndim != 4 or len(crops) == 0:
        raise ValueError(f"calibration crops must be (N, 3, H, W) with N >= 1, got shape {crops.shape}")
    graph = _graph(src)
    excluded = _fp32_nodes(graph, fp32_nodes)
    if not any(n.startswith("/net/mano/") for n in excluded):
        raise ValueError(f"{src}: the MANO layer (/net/mano/*) must stay fp32; fp32_nodes={tuple(fp32_nodes)}")
    start = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        out = Path(tmp) / dst.name  # the data file's name is stored in the graph: write under the final name
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(_calibrate(src, graph, crops), ranges)
        del graph
        with _ort_logging_to(log):
            quantize_static(src, out, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            use_external_data_format=True, calibration_cache_path=ranges,
                            extra_options={"MatMulConstBOnly": True})
        error = np.linalg.norm(_joints(out, crops) - _joints(src, crops), axis=-1) * 1000
        report = QuantizationReport(dst, float(error.max()), float(error.mean()), len(crops), len(excluded),
                                    time.perf_counter() - start)
        log.info("8-bit model: joints vs fp32 on %d crop(s): max %.3f mm, mean %.3f mm (%d nodes kept fp32, %.0f s)",
                 report.crops, report.max_mm, report.mean_mm, report.fp32_nodes, report.seconds)
        if report.max_mm > max_error_mm:
            raise QuantizationError(f"8-bit model's joints are up to {report.max_mm:.3f} mm from fp32 (mean "
                                    f"{report.mean_mm:.3f} mm), above the {max_error_mm:g} mm allowed: {dst} not "
                                    "written", report)
        data = dst.with_name(dst.name + ".data")
        shutil.move(str(out.with_name(out.name + ".data")), data)
        shutil.move(str(out), dst)
        for path in (data, dst):
            give_default_permissions(path)
    return report
