"""The search over candidates (which leading ViT blocks and which block layers stay fp32): each candidate
quantized and measured (``Candidates``), the block layers tried in families (``layer_families``), and of those
within the bounds the one with the fewest fp32 multiply-adds found (``cheapest``, ``fewest``)."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .graph import ViTLayout, fp32_node_names, quantized_matmuls
from .report import JointError, Trial

log = logging.getLogger(__name__)

Candidate = tuple[int, tuple[str, ...]]  # leading fp32 ViT blocks, fp32 block layers


def fewest(counts: Sequence[int], passes: Callable[[int], bool]) -> int | None:
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


def cheapest(counts: Sequence[int], families: Iterable[tuple[str, ...]],
             share: Callable[[int, tuple[str, ...]], float],
             passes: Callable[[int, tuple[str, ...]], bool]) -> Candidate | None:
    """The candidate with the smallest fp32 ``share`` for which ``passes`` holds, family by family: for each tuple
    of fp32 block layers of ``families`` (each family costlier than the one before at the same block count), the
    fewest leading fp32 blocks of ``counts`` among those cheaper than the best found (``fewest``). Stops when a
    family passes at the first count (no later one can be cheaper) or none of its candidates is cheaper; None when
    nothing passes. ``families`` is drawn lazily: it may measure before giving the next family."""
    best: Candidate | None = None
    for layers in families:
        limit = share(*best) if best is not None else math.inf
        cheaper = [k for k in counts if share(k, layers) < limit]
        found = fewest(cheaper, lambda k, layers=layers: passes(k, layers))
        if found is not None:
            best = (found, layers)
        if not cheaper or found == counts[0]:
            break
    return best


@dataclass(frozen=True)
class Bounds:
    """The largest 3D joint error against fp32 allowed, mm: ``max_mm`` over every joint, ``mean_mm`` on average."""

    max_mm: float
    mean_mm: float

    def hold(self, max_mm: float, mean_mm: float) -> bool:
        return max_mm <= self.max_mm and mean_mm <= self.mean_mm


class Candidates:
    """The candidates of one model (``vit``: its graph's ViT), measured: each written by ``quantize(out,
    quantized)`` (e.g. a ``StaticQuantizer``) as ``folder/<n>/<name>`` with the nodes matching ``fp32_patterns``
    fp32, its error measured by ``error``. The file of the last candidate within ``bounds`` is kept in ``kept``
    (the search tries only cheaper ones after it), the others deleted; ``trials``: every candidate, in order."""

    def __init__(self, vit: ViTLayout, fp32_patterns: tuple[str, ...], quantize: Callable[[Path, list[str]], None],
                 error: JointError, bounds: Bounds, folder: Path, name: str, rounding: str) -> None:
        self.vit, self.fp32_patterns, self.quantize, self.error = vit, fp32_patterns, quantize, error
        self.bounds, self.folder, self.name, self.rounding = bounds, folder, name, rounding
        self.trials: list[Trial] = []
        self.kept: Path | None = None

    def measure(self, blocks: int, fp32: tuple[str, ...], keep: bool = True) -> Trial:
        """Quantize and measure one candidate; its file is kept when ``keep`` and it is within the bounds."""
        graph = self.vit.graph
        quantized = quantized_matmuls(graph, fp32_node_names(graph, self.fp32_patterns, blocks, fp32))
        out = self.folder / str(len(self.trials)) / self.name  # the data file's name is stored in the graph
        out.parent.mkdir()
        self.quantize(out, quantized)
        error = self.error(out)
        trial = Trial(blocks, fp32, self.vit.share(blocks, fp32), len(quantized), float(error.max()),
                      float(error.mean()))
        self.trials.append(trial)
        log.info("8-bit candidate (%s rounding), first %d of %d ViT blocks fp32, block layers fp32: %s (%.0f%% "
                 "of the ViT's multiply-adds fp32): joints vs fp32 on %d held-out crop(s) max %.3f mm, mean "
                 "%.3f mm", self.rounding, blocks, self.vit.depth, ", ".join(fp32) or "none", 100 * trial.fp32_share,
                 len(self.error.held_out), error.max(), error.mean())
        if keep and self.bounds.hold(error.max(), error.mean()):
            if self.kept is not None:
                shutil.rmtree(self.kept.parent)
            self.kept = out
        else:
            shutil.rmtree(out.parent)
        return trial

    def passes(self, blocks: int, fp32: tuple[str, ...]) -> bool:
        """Whether the candidate, measured (``measure``), is within the bounds."""
        trial = self.measure(blocks, fp32)
        return self.bounds.hold(trial.max_mm, trial.mean_mm)


def layer_families(candidates: Candidates, blocks: int, given: tuple[str, ...] | None) -> Iterator[tuple[str, ...]]:
    """The fp32 block layers to try: ``given`` alone, or (None) none and then, by measured error per multiply-add
    of each layer alone 8-bit (the others fp32, with the first ``blocks`` blocks fp32), the worst one, two, ...
    (never all)."""
    if given is not None:
        yield given
        return
    yield ()
    layers = candidates.vit.layers
    alone = {layer: candidates.measure(blocks, tuple(other for other in layers if other != layer), keep=False)
             for layer in layers}
    order = sorted(layers, key=lambda layer: -alone[layer].mean_mm ** 2 / candidates.vit.macs[layer])
    for count in range(1, len(order)):
        yield tuple(order[:count])
