"""One 8-bit copy of an exported model: onnxruntime's static QDQ quantization of the named weight MatMuls, with
the calibration's ranges, then the int8 weights re-rounded (optional) and the biases corrected."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .activations import Calibration
from .weights import correct_biases

log = logging.getLogger(__name__)


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


def quantize_qdq(src: Path, out: Path, quantized: list[str], calibration: Calibration, ranges: Path,
                 gptq: Callable[[Path], object] | None) -> None:
    """``quantize_static`` of ``src`` into ``out`` (weights in ``<out>.data``; ``out``'s folder must hold no
    earlier data file): only the weight MatMuls named in ``quantized`` 8-bit, activation ranges from ``ranges``
    (``calibration.ranges`` saved as onnxruntime's calibration cache), the int8 weights re-rounded by ``gptq``
    (e.g. a ``GptqRounding``; None: onnxruntime's round-to-nearest kept), biases corrected. (The nodes are named:
    in the QDQ format onnxruntime would also quantize the MatMuls of two activations, the attention products,
    whatever its ``MatMulConstBOnly`` option says.)"""
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
    correct_biases(src, out, calibration.input_means)


@dataclass(frozen=True)
class StaticQuantizer:
    """``quantize_qdq`` with everything but the output and the MatMuls to quantize fixed: called as
    ``quantizer(out, quantized)``."""

    src: Path
    calibration: Calibration
    ranges: Path
    gptq: Callable[[Path], object] | None

    def __call__(self, out: Path, quantized: list[str]) -> None:
        quantize_qdq(self.src, out, quantized, self.calibration, self.ranges, self.gptq)
