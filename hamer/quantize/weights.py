"""The int8 weights of a quantized copy, edited in place: re-rounded by GPTQ on onnxruntime's grid
(``round_weights``, ``GptqRounding``) and their rounding's mean shift taken off the biases (``correct_biases``)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .activations import hessians
from .gptq import gptq_round
from .graph import quantized_weights, read_tensor, write_tensor

log = logging.getLogger(__name__)

# Memory for the calibration inputs' Hessians (float32, K x K per weight MatMul input) held at once: the weights'
# inputs are taken in groups within it, one pass over the calibration crops per group (4 passes on ViT-H).
HESSIAN_BYTES = 1 << 30


def round_weights(src: Path, graph, path: Path, crops: np.ndarray, rounded: dict[str, np.ndarray]) -> int:
    """Re-round the int8 weights of the quantized model at ``path`` (from ``src``, whose weightless ``graph`` is
    given) by GPTQ on onnxruntime's grid (its per-channel scales and zero points kept), the Hessians from the
    activations of ``crops``.

    ``rounded`` caches the integers by fp32 weight name across candidates (a weight's rounding does not depend
    on which other layers are 8-bit: every Hessian comes from the fp32 model). The Hessians are computed in
    groups within ``HESSIAN_BYTES``, one pass over ``crops`` per group. Returns the number of weights rewritten.
    """
    import onnx
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    model, initializers, weights = quantized_weights(src, path)
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
        found = hessians(src, graph, crops, list(group))
        todo = [p for p in pending if p[0] in group]
        for activation, weight in todo:
            _, scale, zero = (read_tensor(initializers[name], path.parent) for name in grids[weight])
            rounded[weight] = gptq_round(read_tensor(float_weights[weight], src.parent), found[activation],
                                         scale, zero, qmin, qmax).astype(np.int8)
        pending = [p for p in pending if p[0] not in group]
        del found
        log.info("GPTQ: %d weight(s) rounded on the Hessians of %d input(s) over %d crop(s) in %.0f s; %d left",
                 len(todo), len(group), len(crops), time.perf_counter() - start, len(pending))
    for w in weights:
        write_tensor(initializers[w.grid[0]], path.parent, rounded[w.weight])
    onnx.save_model(model, str(path))
    return len(weights)


class GptqRounding:
    """``round_weights`` for the quantized copies of one model ``src`` (weightless ``graph``) calibrated on
    ``crops``: called with a copy's path, re-rounds its int8 weights; each weight is rounded once, for the first
    copy that quantizes it, and reused for later ones."""

    def __init__(self, src: Path, graph, crops: np.ndarray) -> None:
        self.src, self.graph, self.crops = src, graph, crops
        self.rounded: dict[str, np.ndarray] = {}

    def __call__(self, path: Path) -> int:
        return round_weights(self.src, self.graph, path, self.crops, self.rounded)


def correct_biases(src: Path, path: Path, input_means: dict[str, np.ndarray]) -> int:
    """Empirical bias correction (Nagel et al., ICCV 2019) of the quantized model at ``path`` made from ``src``.

    Rounding a weight ``W`` (K, N) to ``W_q`` shifts a MatMul's output by ``x @ (W_q - W)``; its mean over the
    calibration activations, ``mean(x) @ (W_q - W)``, is subtracted from the bias the MatMul's Add carries. Only
    the graph file at ``path`` is rewritten (corrected biases inline); one weight is held at a time. Returns the
    number of biases corrected.
    """
    import onnx
    from onnx import numpy_helper

    float_weights = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer}
    model, initializers, weights = quantized_weights(src, path)
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
        q, scale, zero = (read_tensor(initializers[i], path.parent).astype(np.float64) for i in w.grid)
        rounding = (q - zero) * scale - read_tensor(float_weights[w.weight], src.parent)
        bias = initializers[biases[0]]
        value = read_tensor(bias, path.parent) - (input_means[w.activation] @ rounding).astype(np.float32)
        bias.CopyFrom(numpy_helper.from_array(value.astype(np.float32), bias.name))
        corrected += 1
    onnx.save_model(model, str(path))
    return corrected
