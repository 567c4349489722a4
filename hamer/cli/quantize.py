"""``hamer quantize``: an 8-bit copy of an exported .onnx model, its joint error measured."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import non_negative_count, positive


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..onnx_runtime import OnnxRuntime
    from ..quantize import QuantizationError, calibration_sets, check_fp32_choices, image_files, quantize_onnx

    out = Path(args.output)
    if out.suffix != ".onnx":
        print(f"error: {out}: the output must end in .onnx", file=sys.stderr)
        return 2
    try:  # the fp32 choices first: a mistake there is told before the model loads and the crops are made
        check_fp32_choices(args.model, args.fp32_blocks, args.fp32_layers)
        cfg = OnnxRuntime(args.model).cfg
        crops, held_out = calibration_sets(image_files(args.images), cfg)
        report = quantize_onnx(args.model, out, crops, held_out, max_error_mm=args.max_error_mm,
                               max_mean_error_mm=args.max_mean_error_mm, fp32_blocks=args.fp32_blocks,
                               fp32_layers=args.fp32_layers, rounding=args.rounding)
    except QuantizationError as exc:
        print(f"error: {exc}; raise --max-error-mm / --max-mean-error-mm to accept more", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (8-bit, {report.rounding} rounding, the first {report.fp32_blocks} of {report.blocks} ViT "
          f"blocks and block layers {', '.join(report.fp32_layers) or 'none'} fp32 ({100 * report.fp32_share:.0f}% "
          f"of the ViT's multiply-adds), {report.quantized_matmuls} MatMuls 8-bit): joints vs fp32 on "
          f"{report.measured_crops} held-out hand crop(s) from {args.images} (calibrated on {report.fit_crops} "
          f"other crops): max "
          f"{report.max_mm:.3f} mm, mean {report.mean_mm:.3f} mm (for scale, a 1-pixel shift of those crops moves "
          f"the fp32 joints by max {report.shift_max_mm:.3f}, mean {report.shift_mean_mm:.3f} mm); "
          f"use it with `hamer run --backend onnx --onnx {out}`")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``quantize`` command's arguments."""
    quantize = sub.add_parser("quantize", help="an 8-bit copy of an exported .onnx model, its error measured",
                              description="Static per-channel 8-bit quantization (ONNX Runtime) calibrated on the "
                                          "hands MediaPipe finds in every other image of --images (each with 7 "
                                          "jittered boxes), int8 weights rounded by GPTQ, biases corrected for "
                                          "weight rounding. The first ViT blocks and the block layers with the "
                                          "largest error per multiply-add stay fp32, as few as the bounds allow: "
                                          "candidates are measured (joint error against the fp32 model on "
                                          "the hands of the other images); nothing is written when none is within "
                                          "--max-error-mm and --max-mean-error-mm.")
    quantize.add_argument("model", metavar="MODEL.onnx", help="an fp32 model from HAMER(export_onnx=...)")
    quantize.add_argument("output", metavar="OUT.onnx")
    quantize.add_argument("--images", metavar="DIR", required=True,
                          help="a folder of photographs with hands, like yours, at least 2 (half calibrate, half "
                               "measure the error)")
    quantize.add_argument("--max-error-mm", type=positive, default=1.0, metavar="X",
                          help="largest 3D joint error against fp32 allowed, mm (default: 1.0)")
    quantize.add_argument("--max-mean-error-mm", type=positive, default=0.3, metavar="X",
                          help="largest mean 3D joint error against fp32 allowed, mm (default: 0.3)")
    quantize.add_argument("--fp32-blocks", type=non_negative_count, metavar="N",
                          help="keep exactly the first N ViT blocks fp32 (default: search)")
    quantize.add_argument("--fp32-layers", nargs="*", metavar="LAYER",
                          help="keep exactly these layers of every ViT block fp32, e.g. attn.proj (none given: no "
                               "layer; default: search)")
    quantize.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                          help="int8 weight rounding: GPTQ on the calibration activations (default) or "
                               "round-to-nearest")
    quantize.set_defaults(func=cmd_quantize)
