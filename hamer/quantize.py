"""8-bit models: static, per-channel quantization of an exported model, calibrated on hand crops, error measured.

``onnxruntime.quantization.quantize_static`` (QDQ format) quantizes the constant-weight MatMuls of the ViT: int8
weights per output channel, uint8 activations with ranges calibrated (min/max) on real hand crops. The int8 weights
are then re-rounded on onnxruntime's grid by GPTQ (``hamer.gptq``), which minimizes each layer's output error on the
calibration crops' activations instead of each weight's own error, and each quantized MatMul's bias is corrected
for the mean shift its weight rounding leaves (empirical bias correction). The layers that carry the error stay
fp32, found by measurement (docs/QUANTIZATION.md): always the MANO head and the MANO layer (``FP32_NODES``); then,
as few as the error bounds need, the first ViT blocks and the block layers (e.g. ``attn.proj`` of every block) whose
error per multiply-add is largest. The error is measured on the user's weights on held-out crops (not used to
calibrate) for each candidate, and of the candidates within the bounds the one with the fewest fp32 multiply-adds
is written; nothing is written when no candidate with an 8-bit layer meets the bounds.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .configs import CONFIG_METADATA_KEY, PathLike
from .gptq import gptq_round
from .outputs import give_default_permissions

log = logging.getLogger(__name__)

DEFAULT_MAX_ERROR_MM = 1.0
DEFAULT_MAX_MEAN_ERROR_MM = 0.3
# Node-name patterns (regular expressions on the exported graph's names) kept in fp32: the MANO layer and the MANO
# head. Measured on the full-size random model (docs/QUANTIZATION.md): the head is <1% of the FLOPs but quantizing
# it adds ~2 mm (8.4 -> 6.2 mm max with it in fp32).
FP32_NODES = (r"^/net/mano/", r"^/net/mano_head/")
# The ViT's blocks in the exported graph, numbered from the input. An error made early is carried through every
# later block: measured per layer, the first blocks carry most of it (docs/QUANTIZATION.md), so blocks are kept
# fp32 from the first on.
BLOCK_NODES = re.compile(r"^/net/backbone/blocks\.(\d+)/")
ROUNDINGS = ("gptq", "nearest")
# Memory for the calibration inputs' Hessians (float32, K x K per weight MatMul input) held at once: the weights'
# inputs are taken in groups within it, one pass over the calibration crops per group (4 passes on ViT-H).
HESSIAN_BYTES = 1 << 30
# Box jitter of the extra calibration crops, HaMeR's training augmentation ranges (its config's
# DATASETS.CONFIG.TRANS_FACTOR and SCALE_FACTOR): centre moved by up to 2% of the box, size scaled by 0.7-1.3.
JITTER_SHIFT = 0.02
JITTER_SCALE = 0.3
CALIBRATION_JITTER = 7  # jittered copies of each calibration hand: GPTQ's Hessians from 8x the activations


class QuantizationError(RuntimeError):
    """The quantized model's joints are further from fp32 than allowed; ``report`` holds the measurement."""

    def __init__(self, message: str, report: QuantizationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Trial:
    """One candidate: the first ``fp32_blocks`` ViT blocks and the ``fp32_layers`` of every block kept fp32, the
    share of the ViT's multiply-adds left fp32, its 3D joint error against fp32 (mm)."""

    fp32_blocks: int
    fp32_layers: tuple[str, ...]
    fp32_share: float
    quantized_matmuls: int
    max_mm: float
    mean_mm: float


@dataclass(frozen=True)
class QuantizationReport:
    """The 8-bit model written (or refused): its 3D joint error against fp32 on the ``measured_crops`` held-out
    crops (mm; the ``fit_crops`` calibration crops were not among them), the weights' ``rounding``, the ViT blocks
    kept fp32 (the first ``fp32_blocks`` of ``blocks``), and every candidate measured, in order.

    For scale, ``shift_max_mm``/``shift_mean_mm``: how far the fp32 joints move when every held-out crop is shifted
    by one pixel (a box moved by 1/256 of its size), the jitter any detector adds.
    """

    path: Path
    max_mm: float
    mean_mm: float
    fit_crops: int
    measured_crops: int
    rounding: str
    fp32_blocks: int
    fp32_layers: tuple[str, ...]
    fp32_share: float
    blocks: int
    quantized_matmuls: int
    trials: tuple[Trial, ...]
    shift_max_mm: float
    shift_mean_mm: float
    seconds: float


def jittered_boxes(boxes: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 4) boxes x1, y1, x2, y2 -> (N * copies, 4): each box ``copies`` times with its centre moved by up to
    ``JITTER_SHIFT`` of its width/height and its size scaled by 1 +- ``JITTER_SCALE`` (uniform draws)."""
    boxes = np.repeat(np.asarray(boxes, dtype=np.float64), copies, axis=0)
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + size * rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size.shape)
    half = size / 2 * (1 + rng.uniform(-JITTER_SCALE, JITTER_SCALE, (len(boxes), 1)))
    return np.concatenate([centre - half, centre + half], axis=1)


def calibration_crops(images: Iterable[PathLike], cfg, rescale_factor: float = 2.0, jitter: int = 0,
                      seed: int = 0) -> np.ndarray:
    """Network inputs (N, 3, 256, 256) float32 for every hand MediaPipe finds in ``images`` (image files).

    The crops are made as ``HAMER.process_with_mediapipe`` makes them (left hands mirrored), each hand followed by
    ``jitter`` crops of it with its box jittered as HaMeR's training jittered boxes (``jittered_boxes``, drawn
    from ``seed``): more calibration activations from the same hands. ValueError when an image cannot be read or
    no hand is found in any.
    """
    from .detection import HandDetector
    from .images import read_image
    from .pipeline import make_inputs

    images = list(images)
    rng = np.random.default_rng(seed)
    batches = []
    with HandDetector() as detector:
        for path in images:
            img = read_image(path)  # an unreadable image: hamer.images.ImageError, a ValueError naming it
            for d in detector.detect(img):
                boxes = np.concatenate([d.box[None], jittered_boxes(d.box[None], jitter, rng)]).astype(np.float32)
                rights = np.full(len(boxes), d.label == "Right")
                batches.append(make_inputs(img, boxes, rights, cfg, rescale_factor)[0])
    if not batches:
        shown = ", ".join(map(str, images[:4])) + (", ..." if len(images) > 4 else "")
        raise ValueError(f"MediaPipe found no hand in any of the {len(images)} image(s) {shown}")
    return np.concatenate(batches)


def calibration_sets(images: list[PathLike], cfg, jitter: int = CALIBRATION_JITTER) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out crops from ``images`` (image files, in order): the hands of every other image
    (the 1st, 3rd, ...), each with ``jitter`` jittered copies, calibrate; the hands of the others, as they are,
    measure the error. ValueError when there are fewer than 2 images or a set has no hand."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images (half calibrate, half measure the error), got {len(images)}")
    return calibration_crops(images[0::2], cfg, jitter=jitter), calibration_crops(images[1::2], cfg)


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


def _fp32_nodes(graph, patterns: Iterable[str], blocks: int, layers: Iterable[str] = ()) -> list[str]:
    """Names of the nodes matching ``patterns``, inside the first ``blocks`` ViT blocks, or inside one of the block
    layers ``layers`` (module paths within a block, e.g. "attn.proj") of any block."""
    compiled = [re.compile(p) for p in patterns]
    prefixes = tuple(layer.replace(".", "/") + "/" for layer in layers)

    def kept(name: str) -> bool:
        block = BLOCK_NODES.match(name)
        if block is not None and (int(block.group(1)) < blocks or name[block.end():].startswith(prefixes)):
            return True
        return any(p.search(name) for p in compiled)

    return [n.name for n in graph.graph.node if kept(n.name)]


def _depth(graph) -> int:
    """The number of ViT blocks in the exported graph."""
    found = {int(m.group(1)) for n in graph.graph.node if (m := BLOCK_NODES.match(n.name))}
    return max(found) + 1 if found else 0


def _block_matmuls(graph) -> dict[str, tuple[str, int]]:
    """The weight MatMuls of the ViT blocks by node name: their block layer (module path within the block, e.g.
    "attn.proj") and multiply-adds per token (K x N of the weight)."""
    dims = {t.name: t.dims for t in graph.graph.initializer}
    found = {}
    for node in _weight_matmuls(graph):
        if block := BLOCK_NODES.match(node.name):
            k, n = dims[node.input[1]]
            found[node.name] = (node.name[block.end():].rsplit("/", 1)[0].replace("/", "."), int(k) * int(n))
    return found


def _weight_matmuls(graph) -> list:
    """The MatMul nodes whose second input is a weight (an initializer)."""
    constants = {i.name for i in graph.graph.initializer}
    return [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def _quantized_matmuls(graph, fp32: Iterable[str]) -> list[str]:
    """Names of the weight MatMuls not among the node names ``fp32``: the ones a candidate makes 8-bit."""
    kept = set(fp32)
    return [n.name for n in _weight_matmuls(graph) if n.name not in kept]


@dataclass(frozen=True)
class Calibration:
    """What the calibration crops gave: each MatMul activation's range, and each weight MatMul's mean input row
    ((K,) float64, keyed by the activation's name) for the bias correction."""

    ranges: object  # onnxruntime.quantization.calibrate.TensorsData
    input_means: dict[str, np.ndarray]


def _activations(src: Path, graph, crops: np.ndarray, tensors: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The float32 values of ``tensors`` (intermediate tensors of ``src``), one dict per crop of ``crops``: a copy
    of ``graph`` with them as extra outputs is written beside ``src`` (so that it reads ``src``'s weight file:
    the weights are held once) and run with ONNX Runtime, one crop at a time."""
    import onnx

    from .runtime import ONNX_INPUT, onnx_session

    extended = onnx.ModelProto()
    extended.CopyFrom(graph)
    outputs = {o.name for o in graph.graph.output}
    extended.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    wanted = set(tensors)
    with tempfile.NamedTemporaryFile(dir=src.parent, prefix=f".{src.stem}-calibration-", suffix=".onnx") as tmp:
        onnx.save_model(extended, tmp.name)
        session = onnx_session(Path(tmp.name), torch.device("cpu"))
        names = [o.name for o in session.get_outputs()]
        for i in range(len(crops)):
            values = session.run(None, {ONNX_INPUT: crops[i:i + 1]})
            yield {n: v for n, v in zip(names, values, strict=True)
                   if n in wanted and v.dtype == np.float32 and v.size}


def _calibrate(src: Path, graph, crops: np.ndarray) -> Calibration:
    """Min/max of every MatMul's activations on ``crops`` (one crop at a time), as onnxruntime's MinMax
    calibrator computes them, and the mean input row of every weight MatMul. (onnxruntime's own calibrator holds
    the weights three times: 10 GB on ViT-H.)"""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    constants = {i.name for i in graph.graph.initializer}
    constants |= {o for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
    tensors = list(dict.fromkeys(t for n in graph.graph.node if n.op_type == "MatMul"
                                 for t in (*n.input, *n.output) if t and t not in constants))
    weight_inputs = {n.input[0] for n in _weight_matmuls(graph)}
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = defaultdict(int)
    for values in _activations(src, graph, crops, tensors):
        for name, value in values.items():
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
            if name in weight_inputs:
                flat = value.reshape(-1, value.shape[-1])
                sums[name] = sums.get(name, 0) + flat.sum(0, dtype=np.float64)
                rows[name] += len(flat)
    ranges = {t: (np.array([low[t]], np.float32), np.array([high[t]], np.float32)) for t in tensors
              if np.isfinite(low[t])}
    return Calibration(TensorsData(CalibrationMethod.MinMax, ranges), {t: sums[t] / rows[t] for t in sums})


def _hessians(src: Path, graph, crops: np.ndarray, inputs: list[str]) -> dict[str, np.ndarray]:
    """``sum x^T x`` (K, K) float32 of each activation in ``inputs`` over the rows ``x`` (K,) it takes on
    ``crops`` (every token of every crop)."""
    sums: dict[str, np.ndarray] = {}
    for values in _activations(src, graph, crops, inputs):
        for name, value in values.items():
            flat = value.reshape(-1, value.shape[-1])
            if name in sums:
                sums[name] += flat.T @ flat
            else:
                sums[name] = flat.T @ flat
    return sums


def _tensor(tensor, folder: Path) -> np.ndarray:
    """The array of an initializer, read from its external data file under ``folder`` when it has one."""
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if uses_external_data(tensor):
        tensor = type(tensor).FromString(tensor.SerializeToString())
        load_external_data_for_tensor(tensor, str(folder))
    return numpy_helper.to_array(tensor)


def _write_tensor(tensor, folder: Path, value: np.ndarray) -> None:
    """Overwrite the data of an initializer with ``value`` (same dtype and size): in its external data file under
    ``folder`` when it has one, else in ``tensor`` itself (the graph must then be saved)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not uses_external_data(tensor):
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return
    info = ExternalDataInfo(tensor)
    data = np.ascontiguousarray(value).tobytes()
    if info.length is not None and info.length != len(data):
        raise ValueError(f"{tensor.name}: {len(data)} bytes to write over {info.length}")
    with open(folder / info.location, "r+b") as file:
        file.seek(info.offset or 0)
        file.write(data)


class QuantizedWeight(NamedTuple):
    """An 8-bit weight MatMul of a quantized model: its name, its input activation, the fp32 weight's name in the
    source model, and the names of its DequantizeLinear's (q, scale, zero point) initializers."""

    matmul: str
    activation: str
    weight: str
    grid: tuple[str, str, str]


def _quantized_weights(src: Path, path: Path) -> tuple[object, dict, list[QuantizedWeight]]:
    """The graph of the quantized model at ``path`` (without weights), its initializers by name, and its 8-bit
    weight MatMuls (made from ``src``)."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False)
    inputs = {n.name: (n.input[0], n.input[1]) for n in _weight_matmuls(graph)}
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        dequantize = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear" and node.name in inputs:
            found.append(QuantizedWeight(node.name, *inputs[node.name], tuple(dequantize.input)))
    return model, initializers, found


def _round_weights(src: Path, graph, path: Path, crops: np.ndarray, rounded: dict[str, np.ndarray]) -> int:
    """Re-round the int8 weights of the quantized model at ``path`` (from ``src``) by GPTQ on onnxruntime's grid
    (its per-channel scales and zero points kept), the Hessians from the activations of ``crops``.

    ``rounded`` caches the integers by fp32 weight name across candidates (a weight's rounding does not depend
    on which other layers are 8-bit: every Hessian comes from the fp32 model). The Hessians are computed in
    groups within ``HESSIAN_BYTES``, one pass over ``crops`` per group. Returns the number of weights rewritten.
    """
    import onnx
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    model, initializers, weights = _quantized_weights(src, path)
    qmin, qmax = (int(v) for v in get_qmin_qmax_for_qType(onnx.TensorProto.INT8, symmetric=True))
    float_weights = {t.name: t for t in graph.graph.initializer}
    pending = list(dict.fromkeys((w.activation, w.weight) for w in weights if w.weight not in rounded))
    grids = {w.weight: w.grid for w in weights}
    while pending:
        group: dict[str, int] = {}  # activation -> its width K, within the memory budget (at least one)
        for activation, weight in pending:
            width = int(float_weights[weight].dims[0])
            if activation not in group and group and 4 * (sum(k * k for k in group.values()) + width * width) \
                    > HESSIAN_BYTES:
                break
            group[activation] = width
        start = time.perf_counter()
        hessians = _hessians(src, graph, crops, list(group))
        todo = [p for p in pending if p[0] in group]
        for activation, weight in todo:
            _, scale, zero = (_tensor(initializers[name], path.parent) for name in grids[weight])
            rounded[weight] = gptq_round(_tensor(float_weights[weight], src.parent), hessians[activation],
                                         scale, zero, qmin, qmax).astype(np.int8)
        pending = [p for p in pending if p[0] not in group]
        del hessians
        log.info("GPTQ: %d weight(s) rounded on the Hessians of %d input(s) over %d crop(s) in %.0f s; %d left",
                 len(todo), len(group), len(crops), time.perf_counter() - start, len(pending))
    for w in weights:
        _write_tensor(initializers[w.grid[0]], path.parent, rounded[w.weight])
    onnx.save_model(model, str(path))
    return len(weights)


def _correct_biases(src: Path, path: Path, input_means: dict[str, np.ndarray]) -> int:
    """Empirical bias correction (Nagel et al., ICCV 2019) of the quantized model at ``path`` made from ``src``.

    Rounding a weight ``W`` (K, N) to ``W_q`` shifts a MatMul's output by ``x @ (W_q - W)``; its mean over the
    calibration activations, ``mean(x) @ (W_q - W)``, is subtracted from the bias the MatMul's Add carries. Only
    the graph file at ``path`` is rewritten (corrected biases inline); one weight is held at a time. Returns the
    number of biases corrected.
    """
    import onnx
    from onnx import numpy_helper

    float_weights = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer}
    model, initializers, weights = _quantized_weights(src, path)
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {n.name: n.output[0] for n in model.graph.node}
    corrected = 0
    for w in weights:
        adds = [c for c in consumers[outputs[w.matmul]] if c.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i in initializers]
        if len(adds) != 1 or len(biases) != 1 or w.activation not in input_means:
            continue
        q, scale, zero = (_tensor(initializers[i], path.parent).astype(np.float64) for i in w.grid)
        rounding = (q - zero) * scale - _tensor(float_weights[w.weight], src.parent)
        bias = initializers[biases[0]]
        value = _tensor(bias, path.parent) - (input_means[w.activation] @ rounding).astype(np.float32)
        bias.CopyFrom(numpy_helper.from_array(value.astype(np.float32), bias.name))
        corrected += 1
    onnx.save_model(model, str(path))
    return corrected


def _joints(path: Path, *crop_sets: np.ndarray) -> list[np.ndarray]:
    """3D joints (N, 21, 3) of the file at ``path`` on each of ``crop_sets``, one crop at a time (bounded
    memory), with one session."""
    from .runtime import OnnxRuntime

    runtime = OnnxRuntime(path, torch.device("cpu"))
    return [np.concatenate([runtime(crops[i:i + 1])["pred_keypoints_3d"] for i in range(len(crops))])
            for crops in crop_sets]


def _quantize(src: Path, out: Path, quantized: list[str], calibration: Calibration, ranges: Path,
              gptq: Callable[[Path], object] | None) -> None:
    """``quantize_static`` of ``src`` into ``out`` (weights in ``<out>.data``): only the weight MatMuls named in
    ``quantized`` 8-bit, their int8 weights re-rounded by ``gptq`` (None: onnxruntime's round-to-nearest kept),
    biases corrected. (The nodes are named: in the QDQ format onnxruntime would also quantize the MatMuls of two
    activations, the attention products, whatever its ``MatMulConstBOnly`` option says.)"""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with _ort_logging_to(log):
        quantize_static(src, out, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=quantized, calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=True, calibration_cache_path=ranges,
                        # the MatMul's output stays float: no rounding before the bias is added
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
    if gptq is not None:
        gptq(out)
    _correct_biases(src, out, calibration.input_means)


def _fewest(counts: Sequence[int], passes: Callable[[int], bool]) -> int | None:
    """The first of ``counts`` (leading fp32 blocks, ascending) for which ``passes`` holds: the first count tried
    first, then a binary search, taking the error as falling with each block kept fp32 (as measured, within noise);
    None when none passes."""
    if not counts:
        return None
    if passes(counts[0]):
        return counts[0]
    low, high = 0, len(counts)  # counts[low] fails; counts[high] is taken to pass
    while high - low > 1:
        middle = (low + high) // 2
        if passes(counts[middle]):
            high = middle
        else:
            low = middle
    return counts[high] if high < len(counts) else None


Candidate = tuple[int, tuple[str, ...]]  # leading fp32 ViT blocks, fp32 block layers


def _cheapest(counts: Sequence[int], families: Iterable[tuple[str, ...]],
              share: Callable[[int, tuple[str, ...]], float],
              passes: Callable[[int, tuple[str, ...]], bool]) -> Candidate | None:
    """The candidate with the smallest fp32 ``share`` for which ``passes`` holds, family by family: for each tuple
    of fp32 block layers of ``families`` (each family costlier than the one before at the same block count), the
    fewest leading fp32 blocks of ``counts`` among those cheaper than the best found (``_fewest``). Stops when a
    family passes at the first count (no later one can be cheaper) or none of its candidates is cheaper; None when
    nothing passes. ``families`` is drawn lazily: it may measure before giving the next family."""
    best: Candidate | None = None
    for layers in families:
        limit = share(*best) if best is not None else math.inf
        cheaper = [k for k in counts if share(k, layers) < limit]
        found = _fewest(cheaper, lambda k, layers=layers: passes(k, layers))
        if found is not None:
            best = (found, layers)
        if not cheaper or found == counts[0]:
            break
    return best


def quantize_onnx(src: PathLike, dst: PathLike, crops: np.ndarray, held_out: np.ndarray,
                  max_error_mm: float = DEFAULT_MAX_ERROR_MM, max_mean_error_mm: float = DEFAULT_MAX_MEAN_ERROR_MM,
                  fp32_nodes: Iterable[str] = FP32_NODES, fp32_blocks: int | None = None,
                  fp32_layers: Iterable[str] | None = None, rounding: str = "gptq") -> QuantizationReport:
    """Write an 8-bit copy of the exported model ``src`` to ``dst`` (weights in ``<dst>.data``), calibrated on
    ``crops`` and within ``max_error_mm`` (largest 3D joint error against ``src``) and ``max_mean_error_mm`` (its
    mean) on ``held_out``.

    ``crops``, ``held_out``: (N, 3, 256, 256) normalized hand crops (e.g. from :func:`calibration_crops`), the first
    to calibrate (activation ranges, GPTQ Hessians, bias correction), the second to measure the error: hands not
    among ``crops``, or the error fits the calibration. ``rounding``: "gptq" (default) or "nearest"
    (onnxruntime's round-to-nearest int8 weights). ``fp32_nodes``: node-name patterns kept in fp32 (the MANO layer
    must be among them). ``fp32_blocks``: how many leading ViT blocks stay fp32; ``fp32_layers``: which block
    layers (module paths within a ViT block, e.g. "attn.proj") stay fp32 in every block. None (the default) for
    either searches it: of the candidates measured, the one within both bounds with the fewest fp32 multiply-adds
    is written. The search: every layer 8-bit first; then the fewest leading fp32 blocks (binary search); then,
    with each block layer alone 8-bit measured, the block layers kept fp32 one more at a time in order of error
    per multiply-add, each time with the fewest leading blocks that are still cheaper than the best found. The
    metadata (config) is kept, so ``dst`` runs with ``HAMER(backend="onnx", onnx_path=dst)``.

    Raises:
        QuantizationError: no candidate with a quantized layer meets the bounds; nothing is written.
        FileNotFoundError / ValueError: ``src`` missing or not from ``hamer.export``; crops empty; bad bounds;
        an unknown block layer.
    """
    from onnxruntime.quantization.calibrate import save_tensors_data

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model not found: {src}")
    crops, held_out = (np.ascontiguousarray(c, dtype=np.float32) for c in (crops, held_out))
    for name, value in (("calibration crops", crops), ("held-out crops", held_out)):
        if value.ndim != 4 or len(value) == 0:
            raise ValueError(f"{name} must be (N, 3, H, W) with N >= 1, got shape {value.shape}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if not (max_error_mm > 0 and max_mean_error_mm > 0):
        raise ValueError(f"error bounds must be > 0 mm, got max {max_error_mm}, mean {max_mean_error_mm}")
    graph = _graph(src)
    depth = _depth(graph)
    if fp32_blocks is not None and not 0 <= fp32_blocks < max(depth, 1):
        raise ValueError(f"fp32_blocks must be 0..{depth - 1} (the ViT has {depth} blocks), got {fp32_blocks}")
    block_matmuls = _block_matmuls(graph)
    layers = list(dict.fromkeys(layer for layer, _ in block_matmuls.values()))
    if fp32_layers is not None:
        fp32_layers = tuple(fp32_layers)
        if unknown := [layer for layer in fp32_layers if layer not in layers]:
            raise ValueError(f"unknown ViT block layer(s) {', '.join(unknown)}: the blocks have {', '.join(layers)}")
        if set(fp32_layers) == set(layers):
            raise ValueError(f"fp32_layers {', '.join(fp32_layers)} would leave no ViT layer 8-bit")
    fp32_nodes = tuple(fp32_nodes)
    if not any(n.startswith("/net/mano/") for n in _fp32_nodes(graph, fp32_nodes, 0)):
        raise ValueError(f"{src}: the MANO layer (/net/mano/*) must stay fp32; fp32_nodes={fp32_nodes}")
    macs = {layer: sum(m for kind, m in block_matmuls.values() if kind == layer) for layer in layers}
    vit_macs = sum(m for _, m in block_matmuls.values())

    def share(blocks: int, fp32: tuple[str, ...]) -> float:
        """The fraction of the ViT's weight multiply-adds left fp32."""
        kept = set(_fp32_nodes(graph, (), blocks, fp32))
        return sum(m for name, (_, m) in block_matmuls.items() if name in kept) / max(vit_macs, 1)

    start = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        calibration = _calibrate(src, graph, crops)
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibration.ranges, ranges)
        # fp32 joints, and for scale the same joints with every crop shifted one pixel right
        reference, shifted = _joints(src, held_out, np.roll(held_out, 1, axis=3))
        shift = np.linalg.norm(shifted - reference, axis=-1) * 1000
        rounded: dict[str, np.ndarray] = {}
        gptq = (lambda path: _round_weights(src, graph, path, crops, rounded)) if rounding == "gptq" else None
        trials: list[Trial] = []
        kept: Path | None = None  # the best candidate that passed: the search only tries cheaper ones after it

        def measure(blocks: int, fp32: tuple[str, ...], keep: bool = True) -> Trial:
            """Quantize and measure one candidate; its file is kept when ``keep`` and it is within the bounds."""
            nonlocal kept
            quantized = _quantized_matmuls(graph, _fp32_nodes(graph, fp32_nodes, blocks, fp32))
            out = Path(tmp) / str(len(trials)) / dst.name  # the data file's name is stored in the graph
            out.parent.mkdir()
            _quantize(src, out, quantized, calibration, ranges, gptq)
            error = np.linalg.norm(_joints(out, held_out)[0] - reference, axis=-1) * 1000
            trial = Trial(blocks, fp32, share(blocks, fp32), len(quantized), float(error.max()), float(error.mean()))
            trials.append(trial)
            log.info("8-bit candidate (%s rounding), first %d of %d ViT blocks fp32, block layers fp32: %s (%.0f%% "
                     "of the ViT's multiply-adds fp32): joints vs fp32 on %d held-out crop(s) max %.3f mm, mean "
                     "%.3f mm", rounding, blocks, depth, ", ".join(fp32) or "none", 100 * trial.fp32_share,
                     len(held_out), error.max(), error.mean())
            if keep and error.max() <= max_error_mm and error.mean() <= max_mean_error_mm:
                if kept is not None:
                    shutil.rmtree(kept.parent)
                kept = out
            else:
                shutil.rmtree(out.parent)
            return trial

        def passes(blocks: int, fp32: tuple[str, ...]) -> bool:
            trial = measure(blocks, fp32)
            return trial.max_mm <= max_error_mm and trial.mean_mm <= max_mean_error_mm

        def families() -> Iterator[tuple[str, ...]]:
            """The fp32 block layers to try: the given ones, or none and then, by measured error per multiply-add
            of each layer alone 8-bit (the others fp32), the worst one, two, ... (never all)."""
            if fp32_layers is not None:
                yield fp32_layers
                return
            yield ()
            alone = {layer: measure(fp32_blocks or 0, tuple(other for other in layers if other != layer),
                                    keep=False) for layer in layers}
            order = sorted(layers, key=lambda layer: -alone[layer].mean_mm ** 2 / macs[layer])
            for count in range(1, len(order)):
                yield tuple(order[:count])

        counts = range(depth) if fp32_blocks is None else [fp32_blocks]
        best = _cheapest(counts, families(), share, passes)
        chosen = next(t for t in reversed(trials) if (t.fp32_blocks, t.fp32_layers) == best) \
            if best is not None else min(trials, key=lambda t: t.max_mm)
        report = QuantizationReport(dst, chosen.max_mm, chosen.mean_mm, len(crops), len(held_out), rounding,
                                    chosen.fp32_blocks, chosen.fp32_layers, chosen.fp32_share, depth,
                                    chosen.quantized_matmuls, tuple(trials), float(shift.max()), float(shift.mean()),
                                    time.perf_counter() - start)
        fp32 = (f"the first {chosen.fp32_blocks} of {depth} ViT blocks and block layers "
                f"{', '.join(chosen.fp32_layers) or 'none'} fp32")
        if best is None:
            raise QuantizationError(
                f"no 8-bit candidate is within {max_error_mm:g} mm max / {max_mean_error_mm:g} mm mean of fp32 on "
                f"{len(held_out)} held-out crop(s) (the closest, with {fp32}: max {chosen.max_mm:.3f} mm, mean "
                f"{chosen.mean_mm:.3f} mm): {dst} not written", report)
        log.info("8-bit model (%s rounding): %s (%.0f%% of the ViT's multiply-adds), %d MatMuls 8-bit; joints vs "
                 "fp32 on %d held-out crop(s): max %.3f mm, mean %.3f mm (a 1-pixel crop shift: max %.3f, mean %.3f "
                 "mm; %d candidate(s), %.0f s)", rounding, fp32, 100 * report.fp32_share, report.quantized_matmuls,
                 report.measured_crops, report.max_mm, report.mean_mm, report.shift_max_mm, report.shift_mean_mm,
                 len(trials), report.seconds)
        out = kept
        data = dst.with_name(dst.name + ".data")
        shutil.move(str(out.with_name(out.name + ".data")), data)
        shutil.move(str(out), dst)
        for path in (data, dst):
            give_default_permissions(path)
    return report
