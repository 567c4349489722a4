"""The HaMeR network on a torch device (the torch backend), and the torch side of devices: which exist here."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from .configs import check_precision

if TYPE_CHECKING:
    from .models.hamer import HaMeRNet

log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16/AMX, or AVX-512 conversions); else bf16 is slow."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(device: str | torch.device) -> str:
    """The name of a torch device that exists here ("cpu", "cuda", "cuda:1", "mps", "xpu", ...), as torch writes
    it; ValueError naming the problem."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cpu":
        return str(dev)
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.mps, torch.xpu ...
    if backend is None or not hasattr(backend, "is_available"):
        raise ValueError(f"unsupported device {device!r}")
    if not backend.is_available():
        raise ValueError(f"device {device!r} requested but {dev.type} is not available (torch {torch.__version__})")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {device!r} requested but only {count} {dev.type} device(s)")
    return str(dev)


class TorchRuntime:
    """The network on a torch device. ``precision``: "fp32" (default), "bf16" (autocast), "fp16" (autocast, CUDA)."""

    def __init__(self, model: HaMeRNet, device: str | torch.device, precision: str = "fp32") -> None:
        device = torch.device(device)
        check_precision(precision, device.type)
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("this CPU has no bf16 kernels (no AVX-512): bf16 runs several times slower than fp32")
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision
        self.faces = model.mano.faces_tensor.cpu().numpy()  # (1538, 3) MANO triangles, for mesh outputs

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
