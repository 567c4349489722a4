"""The options that turn into a network (:class:`ModelOptions`), checked in one place for ``HAMER``, the corpus
engines and the command line.

    model = ModelOptions(device="cpu", backend="onnx", onnx="hamer.onnx")
    model.check()            # ValueError (OptionError) naming the option at fault; the device's name
    network = hamer.network.load_reconstructor(model)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import configs

BACKENDS = ("auto", "torch", "onnx")
MAX_RESCALE_FACTOR = 100.0  # crop side / box side (HaMeR's demo: 2.0)


class OptionError(ValueError):
    """A model option that cannot work; ``option``: the :class:`ModelOptions` field at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class ModelOptions:
    """The network's options (``HAMER``'s keyword arguments of the same meaning; ``hamer run``'s flags).

    device: torch device string ("cpu", "cuda", "cuda:1"...). backend: "auto", "torch" or "onnx" (see ``HAMER``).
    precision: "fp32", "bf16" or "fp16" (torch backend). data: the data folder (None: :func:`hamer.configs.data_dir`).
    checkpoint: a checkpoint other than the data folder's. onnx: the ``.onnx`` file of the "onnx" backend.
    rescale_factor: crop side / box side. camera: a ``hamer.results.CameraSpec`` (None: HaMeR demo's camera).
    """

    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    data: configs.PathLike | None = None
    checkpoint: configs.PathLike | None = None
    onnx: configs.PathLike | None = None
    rescale_factor: float = 2.0
    camera: Any = None

    def check(self, device_here: bool = True) -> str | None:
        """OptionError (a ValueError) for options that cannot work; the device's name as torch writes it ("cpu",
        "cuda:1") when ``device_here`` (it must exist on this machine: torch is imported to look, except for "cpu";
        else, e.g. for Ray workers elsewhere, the device is not checked and None returned)."""
        from .results import Camera

        if not (isinstance(self.rescale_factor, (int, float)) and 0 < self.rescale_factor <= MAX_RESCALE_FACTOR):
            raise OptionError("rescale_factor", f"rescale_factor must be a number in (0, {MAX_RESCALE_FACTOR}], "
                                                f"got {self.rescale_factor!r}")
        if self.backend not in BACKENDS:
            raise OptionError("backend", f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "onnx" and self.onnx is None:
            raise OptionError("onnx", "backend 'onnx' needs an .onnx file (onnx_path=..., --onnx FILE.onnx)")
        if self.backend == "onnx" and self.precision != "fp32":
            raise OptionError("precision", "backend 'onnx' takes no precision (the file sets the weights' "
                                           "precision: see hamer.quantize.quantize_onnx)")
        if self.backend != "onnx" and self.onnx is not None:
            raise OptionError("onnx", "an .onnx file (onnx_path=..., --onnx) goes with backend 'onnx' only")
        if self.camera is not None and not (isinstance(self.camera, Camera) or callable(self.camera)):
            raise OptionError("camera", f"camera must be a hamer.Camera, a hamer.FieldOfView or a callable (W, H) "
                                        f"-> Camera, got {type(self.camera).__name__}")
        if not device_here:
            if self.precision not in configs.PRECISIONS:
                raise OptionError("precision", f"precision must be one of {configs.PRECISIONS}, got {self.precision!r}")
            return None
        device = "cpu" if isinstance(self.device, str) and self.device == "cpu" else self._device_here()
        try:
            configs.check_precision(self.precision, device.split(":")[0])
        except ValueError as exc:
            raise OptionError("precision", str(exc)) from None
        return device

    def _device_here(self) -> str:
        """The device's name, checked by torch (imported here) to exist on this machine; OptionError if not."""
        from .torch_runtime import resolve_device

        try:
            return resolve_device(self.device)
        except ValueError as exc:
            raise OptionError("device", str(exc)) from None

    @property
    def model_file(self) -> Path:
        """The file the network loads from: the ``.onnx`` file (backend "onnx"), else the checkpoint."""
        if self.backend == "onnx" and self.onnx is not None:
            return Path(self.onnx)
        return configs.data_paths(self.data, self.checkpoint).checkpoint

    def fingerprint(self) -> str:
        """The model by its file paths, as a manifest records it: the checkpoint, resolved, and the ONNX file."""
        model = str(configs.data_paths(self.data, self.checkpoint).checkpoint)
        return model if self.onnx is None else model + f" ({os.path.abspath(self.onnx)})"
