"""Which ViT blocks carry the 8-bit error: each block alone 8-bit, then the most sensitive blocks kept fp32.

The quantizer's own steps (``hamer.quantize``'s modules: the same calibration / held-out split of
``../shared/images``, GPTQ rounding, bias correction, ONNX Runtime) on an exported model: first every block 8-bit
(which also rounds every weight once, reused after), then each ViT block alone 8-bit (the other blocks fp32), then
the ``--keep`` most sensitive blocks (largest mean error alone) kept fp32 and the rest 8-bit, beside the same count
of leading blocks kept fp32 (the quantizer's search). Error: 3D joints against the fp32 model on the held-out hands, mm.

Run: ``python benchmarks/block_sensitivity.py /tmp/hamer_bench/hamer.onnx`` (the ViT-H file ``bench.py`` writes;
2 cores: ~12 minutes of GPTQ, then ~17 s per candidate). Results: ``results/block_sensitivity.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization.calibrate import save_tensors_data

from hamer.onnx_runtime import OnnxRuntime
from hamer.quantize import FP32_NODES, calibration_sets, image_files
from hamer.quantize.activations import calibrate
from hamer.quantize.graph import ViTLayout, fp32_node_names, load_graph, quantized_matmuls
from hamer.quantize.qdq import quantize_qdq
from hamer.quantize.report import joints
from hamer.quantize.weights import GptqRounding

from bench import machine  # also puts this checkout first on sys.path

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an fp32 model exported by hamer (e.g. bench.py's hamer.onnx)")
    parser.add_argument("--keep", type=int, nargs="+", default=[4, 8, 12, 17], help="fp32 block counts to compare")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = OnnxRuntime(args.model).cfg
    fit, held_out = calibration_sets(image_files(IMAGES), cfg)
    graph = load_graph(args.model)
    depth = ViTLayout(graph).depth
    reference = joints(args.model, held_out)[0]
    gptq = GptqRounding(args.model, graph, fit)  # each weight rounded once, for the first candidate

    with tempfile.TemporaryDirectory(dir=args.model.parent, prefix=".sensitivity-") as tmp:
        calibration = calibrate(args.model, graph, fit)
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibration.ranges, ranges)

        def error(fp32: set[int]) -> list[float]:
            """Max and mean joint error (mm) with the blocks ``fp32`` (and the MANO head and layer) kept fp32."""
            blocks = tuple(rf"^/net/backbone/blocks\.{b}/" for b in sorted(fp32))
            quantized = quantized_matmuls(graph, fp32_node_names(graph, (*FP32_NODES, *blocks), 0))
            out = Path(tmp) / "candidate" / "m.onnx"  # a fresh folder: onnx appends to an existing data file
            out.parent.mkdir()
            quantize_qdq(args.model, out, quantized, calibration, ranges, gptq)
            e = np.linalg.norm(joints(out, held_out)[0] - reference, axis=-1) * 1000
            shutil.rmtree(out.parent)
            logging.info("fp32 blocks %s: max %.3f mm, mean %.3f mm", sorted(fp32), e.max(), e.mean())
            return [float(e.max()), float(e.mean())]

        start = time.perf_counter()
        every = error(set())
        alone = [error(set(range(depth)) - {b}) for b in range(depth)]
        order = sorted(range(depth), key=lambda b: -alone[b][1])
        kept = {k: {"most_sensitive": error(set(order[:k])), "leading": error(set(range(k)))} for k in args.keep}
    report = {"machine": machine(), "model": str(args.model),
              "fit_crops": len(fit), "held_out_crops": len(held_out), "every_block": every, "alone": alone,
              "order": order, "kept": kept, "seconds": time.perf_counter() - start,
              # the per-block mean errors combined as independent errors (root of the sum of squares)
              "quadrature_every_block": float(np.sqrt(sum(a[1] ** 2 for a in alone)))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "block_sensitivity.json").write_text(json.dumps(report, indent=1))
    cpu = report["machine"]
    lines = [f"Machine: {cpu['cpu']} (family/model {cpu['cpu_family_model']}), {cpu['logical_cpus']} logical CPUs. "
             f"Joint error against fp32 (max / mean mm) on {len(held_out)} held-out hand crops, GPTQ calibrated on "
             f"{len(fit)} crops, {args.model}.", "",
             f"Every block 8-bit: {every[0]:.3f} / {every[1]:.3f} (the blocks' errors alone, combined as "
             f"independent: mean {report['quadrature_every_block']:.3f}).", "",
             "| block alone 8-bit | " + " | ".join(map(str, range(depth))) + " |",
             "|---" * (depth + 1) + "|",
             "| max | " + " | ".join(f"{a[0]:.3f}" for a in alone) + " |",
             "| mean | " + " | ".join(f"{a[1]:.3f}" for a in alone) + " |", "",
             "| blocks kept fp32 | the most sensitive | the leading (the quantizer's choice) |", "|---|---|---|",
             *(f"| {k} | {v['most_sensitive'][0]:.3f} / {v['most_sensitive'][1]:.3f} | "
               f"{v['leading'][0]:.3f} / {v['leading'][1]:.3f} |" for k, v in kept.items())]
    (args.out / "block_sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
