"""``quantize_onnx``: an 8-bit copy of an exported model, within error bounds measured on held-out crops."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..configs import PathLike
from ..files import give_default_permissions
from .activations import calibrate
from .graph import FP32_NODES, ViTLayout, fp32_node_names, load_graph
from .qdq import StaticQuantizer
from .report import JointError, QuantizationError, QuantizationReport, Trial
from .search import Bounds, Candidates, cheapest, layer_families
from .weights import GptqRounding

log = logging.getLogger(__name__)

DEFAULT_MAX_ERROR_MM = 1.0
DEFAULT_MAX_MEAN_ERROR_MM = 0.3
ROUNDINGS = ("gptq", "nearest")


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
    fp32_nodes = tuple(fp32_nodes)
    vit, fp32_layers = _checked_fp32(src, fp32_nodes, fp32_blocks, fp32_layers)
    graph = vit.graph
    crops, held_out = (np.ascontiguousarray(c, dtype=np.float32) for c in (crops, held_out))
    _check_arguments(crops, held_out, rounding, max_error_mm, max_mean_error_mm)
    start = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        calibration = calibrate(src, graph, crops)
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibration.ranges, ranges)
        error = JointError(src, held_out)
        quantizer = StaticQuantizer(src, calibration, ranges,
                                    GptqRounding(src, graph, crops) if rounding == "gptq" else None)
        candidates = Candidates(vit, fp32_nodes, quantizer, error, Bounds(max_error_mm, max_mean_error_mm),
                                Path(tmp), dst.name, rounding)
        counts = range(vit.depth) if fp32_blocks is None else [fp32_blocks]
        best = cheapest(counts, layer_families(candidates, fp32_blocks or 0, fp32_layers), vit.share,
                        candidates.passes)
        trials = candidates.trials
        chosen = next(t for t in reversed(trials) if (t.fp32_blocks, t.fp32_layers) == best) \
            if best is not None else min(trials, key=lambda t: t.max_mm)
        report = _report(dst, chosen, crops, error, rounding, vit.depth, trials, time.perf_counter() - start)
        fp32 = (f"the first {chosen.fp32_blocks} of {vit.depth} ViT blocks and block layers "
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
        _move(candidates.kept, dst)
    return report


def _check_arguments(crops: np.ndarray, held_out: np.ndarray, rounding: str, max_error_mm: float,
                     max_mean_error_mm: float) -> None:
    """ValueError naming the first of the crops, the rounding and the bounds that is not usable."""
    for name, value in (("calibration crops", crops), ("held-out crops", held_out)):
        if value.ndim != 4 or len(value) == 0:
            raise ValueError(f"{name} must be (N, 3, H, W) with N >= 1, got shape {value.shape}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if not (max_error_mm > 0 and max_mean_error_mm > 0):
        raise ValueError(f"error bounds must be > 0 mm, got max {max_error_mm}, mean {max_mean_error_mm}")


def check_fp32_choices(src: PathLike, fp32_blocks: int | None = None, fp32_layers: Iterable[str] | None = None,
                       fp32_nodes: Iterable[str] = FP32_NODES) -> None:
    """The errors :func:`quantize_onnx` raises for ``src`` and these fp32 choices, at once, from the graph alone (no
    weights read, no crop made): a command checks them before the crops. FileNotFoundError / ValueError."""
    _checked_fp32(Path(src).expanduser(), tuple(fp32_nodes), fp32_blocks, fp32_layers)


def _checked_fp32(src: Path, patterns: tuple[str, ...], blocks: int | None, layers: Iterable[str] | None
                  ) -> tuple[ViTLayout, tuple[str, ...] | None]:
    """The ViT of ``src``'s graph and ``layers`` as a tuple (None kept), once the fp32 choices are checked against
    it: FileNotFoundError, or ValueError when ``src`` is not from ``hamer.export``, ``blocks`` is out of range, a
    layer is unknown, every layer is kept, or ``patterns`` miss the MANO layer."""
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model not found: {src}")
    vit = ViTLayout(load_graph(src))
    depth = vit.depth
    if blocks is not None and not 0 <= blocks < max(depth, 1):
        raise ValueError(f"fp32_blocks must be 0..{depth - 1} (the ViT has {depth} blocks), got {blocks}")
    if layers is not None:
        layers = tuple(layers)
        if unknown := [layer for layer in layers if layer not in vit.layers]:
            raise ValueError(f"unknown ViT block layer(s) {', '.join(unknown)}: the blocks have "
                             f"{', '.join(vit.layers)}")
        if set(layers) == set(vit.layers):
            raise ValueError(f"fp32_layers {', '.join(layers)} would leave no ViT layer 8-bit")
    if not any(n.startswith("/net/mano/") for n in fp32_node_names(vit.graph, patterns, 0)):
        raise ValueError(f"{src}: the MANO layer (/net/mano/*) must stay fp32; fp32_nodes={patterns}")
    return vit, layers


def _report(dst: Path, chosen: Trial, crops: np.ndarray, error: JointError, rounding: str, depth: int,
            trials: list[Trial], seconds: float) -> QuantizationReport:
    """The report of the ``chosen`` candidate among ``trials``."""
    return QuantizationReport(dst, chosen.max_mm, chosen.mean_mm, len(crops), len(error.held_out), rounding,
                              chosen.fp32_blocks, chosen.fp32_layers, chosen.fp32_share, depth,
                              chosen.quantized_matmuls, tuple(trials), float(error.shift.max()),
                              float(error.shift.mean()), seconds)


def _move(out: Path, dst: Path) -> None:
    """Move the model ``out`` and its data file to ``dst`` (and ``<dst>.data``), with default permissions."""
    data = dst.with_name(dst.name + ".data")
    shutil.move(str(out.with_name(out.name + ".data")), data)
    shutil.move(str(out), dst)
    for path in (data, dst):
        give_default_permissions(path)
