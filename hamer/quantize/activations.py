"""The fp32 model's activations on the calibration crops, reduced as the quantizer needs them: each MatMul
activation's min/max and each weight MatMul's mean input row (``calibrate``), the inputs' Hessians (``hessians``)."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .graph import weight_matmuls


@dataclass(frozen=True)
class Calibration:
    """What the calibration crops gave: each MatMul activation's range, and each weight MatMul's mean input row
    ((K,) float64, keyed by the activation's name) for the bias correction."""

    ranges: object  # onnxruntime.quantization.calibrate.TensorsData
    input_means: dict[str, np.ndarray]


def activations(src: Path, graph, crops: np.ndarray, tensors: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The float32 values of ``tensors`` (intermediate tensors of ``src``), one dict per crop of ``crops``: a copy
    of ``graph`` with them as extra outputs is written beside ``src`` (so that it reads ``src``'s weight file:
    the weights are held once) and run with ONNX Runtime, one crop at a time."""
    import onnx

    from ..onnx_runtime import ONNX_INPUT, onnx_session

    extended = onnx.ModelProto()
    extended.CopyFrom(graph)
    outputs = {o.name for o in graph.graph.output}
    extended.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    wanted = set(tensors)
    with tempfile.NamedTemporaryFile(dir=src.parent, prefix=f".{src.stem}-calibration-", suffix=".onnx") as tmp:
        onnx.save_model(extended, tmp.name)
        session = onnx_session(Path(tmp.name), "cpu")
        names = [o.name for o in session.get_outputs()]
        for i in range(len(crops)):
            values = session.run(None, {ONNX_INPUT: crops[i:i + 1]})
            yield {n: v for n, v in zip(names, values, strict=True)
                   if n in wanted and v.dtype == np.float32 and v.size}


def calibrate(src: Path, graph, crops: np.ndarray) -> Calibration:
    """Min/max of every MatMul's activations on ``crops`` (one crop at a time), as onnxruntime's MinMax
    calibrator computes them, and the mean input row of every weight MatMul. (onnxruntime's own calibrator holds
    the weights three times: 10 GB on ViT-H.)"""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    constants = {i.name for i in graph.graph.initializer}
    constants |= {o for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
    tensors = list(dict.fromkeys(t for n in graph.graph.node if n.op_type == "MatMul"
                                 for t in (*n.input, *n.output) if t and t not in constants))
    weight_inputs = {n.input[0] for n in weight_matmuls(graph)}
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = defaultdict(int)
    for values in activations(src, graph, crops, tensors):
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


def hessians(src: Path, graph, crops: np.ndarray, inputs: list[str]) -> dict[str, np.ndarray]:
    """``sum x^T x`` (K, K) float32 of each activation in ``inputs`` over the rows ``x`` (K,) it takes on
    ``crops`` (every token of every crop)."""
    sums: dict[str, np.ndarray] = {}
    for values in activations(src, graph, crops, inputs):
        for name, value in values.items():
            flat = value.reshape(-1, value.shape[-1])
            if name in sums:
                sums[name] += flat.T @ flat
            else:
                sums[name] = flat.T @ flat
    return sums
