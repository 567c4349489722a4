"""8-bit models: static, per-channel quantization of an exported model, calibrated on hand crops, error measured.

``onnxruntime.quantization.quantize_static`` (QDQ format) quantizes the constant-weight MatMuls of the ViT: int8
weights per output channel, uint8 activations with ranges calibrated (min/max) on real hand crops. The int8 weights
are then re-rounded on onnxruntime's grid by GPTQ (``hamer.quantize.gptq``), which minimizes each layer's output
error on the calibration crops' activations instead of each weight's own error, and each quantized MatMul's bias is
corrected for the mean shift its weight rounding leaves (empirical bias correction). The layers that carry the error
stay fp32, found by measurement (docs/QUANTIZATION.md): always the MANO head and the MANO layer (``FP32_NODES``);
then, as few as the error bounds need, the first ViT blocks and the block layers (e.g. ``attn.proj`` of every block)
whose error per multiply-add is largest. The error is measured on the user's weights on held-out crops (not used to
calibrate) for each candidate, and of the candidates within the bounds the one with the fewest fp32 multiply-adds
is written; nothing is written when no candidate with an 8-bit layer meets the bounds.

The modules, each importing only those listed before it:

- ``calibration``: hand crops from image files, the calibration / held-out split.
- ``graph``: what an exported graph holds (weight MatMuls, ViT blocks and layers, the nodes kept fp32) and its
  initializers' values.
- ``activations``: the fp32 activations on the calibration crops: ranges, mean inputs, Hessians.
- ``gptq``: GPTQ rounding of one weight matrix.
- ``weights``: a quantized copy's int8 weights re-rounded by GPTQ, its biases corrected.
- ``qdq``: one 8-bit copy by onnxruntime's ``quantize_static``.
- ``report``: joints, their error against fp32, the report.
- ``search``: the candidates measured, the cheapest within the bounds.
- ``model``: ``quantize_onnx``, and ``check_fp32_choices`` (its checks of the fp32 choices, run first).
"""

from .calibration import CALIBRATION_JITTER, calibration_crops, calibration_sets, image_files, jittered_boxes
from .graph import FP32_NODES
from .model import DEFAULT_MAX_ERROR_MM, DEFAULT_MAX_MEAN_ERROR_MM, ROUNDINGS, check_fp32_choices, quantize_onnx
from .report import QuantizationError, QuantizationReport, Trial

__all__ = ["CALIBRATION_JITTER", "DEFAULT_MAX_ERROR_MM", "DEFAULT_MAX_MEAN_ERROR_MM", "FP32_NODES", "ROUNDINGS",
           "QuantizationError", "QuantizationReport", "Trial", "calibration_crops", "calibration_sets",
           "check_fp32_choices", "image_files", "jittered_boxes", "quantize_onnx"]
