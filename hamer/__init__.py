"""hamer: faithful, stripped-down HaMeR inference (Pavlakos et al., CVPR 2024) for 3D hand joints.

    from hamer import HAMER
    result = HAMER(device="cpu").predict(img_bgr)      # FrameResult: result.hands, each a Hand

Importing is cheap: the names below load their modules on first access (PEP 562), and the network code,
MediaPipe and ONNX Runtime are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .hamer_module import HAMER
    from .overlay import draw
    from .results import Camera, FieldOfView, FrameResult, Hand, ManoParams, NetworkOutput
    from .viewer import log_rerun

__all__ = ["HAMER", "Camera", "FieldOfView", "FrameResult", "Hand", "ManoParams", "NetworkOutput", "__version__",
           "draw", "log_rerun"]

_EXPORTS = {"HAMER": "hamer_module", "Camera": "results", "FieldOfView": "results", "FrameResult": "results",
            "Hand": "results", "ManoParams": "results", "NetworkOutput": "results", "draw": "overlay",
            "log_rerun": "viewer"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hamer' has no attribute {name!r}")
