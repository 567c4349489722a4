"""Measurement and report: a model's 3D joints on crops, their error against the fp32 model (``JointError``), and
what the quantizer reports (``Trial`` per candidate, ``QuantizationReport``, ``QuantizationError``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


class QuantizationError(RuntimeError):
    """The quantized model's joints are further from fp32 than allowed; ``report`` holds the measurement."""

    def __init__(self, message: str, report: QuantizationReport) -> None:
        super().__init__(message)
        self.report = report


def joints(path: Path, *crop_sets: np.ndarray) -> list[np.ndarray]:
    """3D joints (N, 21, 3) of the file at ``path`` on each of ``crop_sets``, one crop at a time (bounded
    memory), with one session."""
    from ..onnx_runtime import OnnxRuntime

    runtime = OnnxRuntime(path)
    return [np.concatenate([runtime(crops[i:i + 1])["pred_keypoints_3d"] for i in range(len(crops))])
            for crops in crop_sets]


class JointError:
    """The 3D joint error of models against the fp32 model ``src`` on the ``held_out`` crops (N, 3, H, W).

    ``reference``: the fp32 joints (N, 21, 3), metres; ``shift``: (N, 21) how far they move, mm, when every crop is
    shifted one pixel right (for scale). Called with a model's path: its joints' distances (N, 21) to
    ``reference``, mm.
    """

    def __init__(self, src: Path, held_out: np.ndarray) -> None:
        self.held_out = held_out
        self.reference, shifted = joints(src, held_out, np.roll(held_out, 1, axis=3))
        self.shift = np.linalg.norm(shifted - self.reference, axis=-1) * 1000

    def __call__(self, path: Path) -> np.ndarray:
        return np.linalg.norm(joints(path, self.held_out)[0] - self.reference, axis=-1) * 1000
