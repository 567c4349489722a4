"""Running the HaMeR network on a batch of normalized crops: the torch backend."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch

from .models.hamer import HaMeRNet

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here; ValueError naming the problem otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}")
    return dev


class TorchRuntime:
    """The network on a torch device. ``precision``: "fp32" (default), "bf16" (autocast), "fp16" (autocast, CUDA)."""

    def __init__(self, model: HaMeRNet, device: torch.device, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, 256, 256) float32 normalized crops -> network outputs as float32 numpy arrays."""
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}
