"""The argparse types and option groups that several commands share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np

from .. import configs

if TYPE_CHECKING:
    from ..results import Camera, FieldOfView


def positive(value: str) -> float:
    number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def non_negative(value: str) -> float:
    number = float(value)
    if not (np.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def formats(value: str) -> tuple[str, ...]:
    from ..formats import parse_formats

    try:
        return parse_formats(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def intrinsics(value: str) -> Camera:
    from ..results import Camera

    try:
        fx, fy, cx, cy = (float(v) for v in value.split(","))
        return Camera(fx, fy, cx, cy)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"need four numbers fx,fy,cx,cy in pixels with fx, fy > 0 ({exc})") from None


def fov(value: str) -> FieldOfView:
    from ..results import FieldOfView

    try:
        return FieldOfView(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def size_bytes(value: str) -> int:
    """A size in bytes: a number with an optional decimal unit (kB, MB, GB, TB: 1 GB = 10^9 bytes), e.g. ``20GB``."""
    units = {"": 1, "b": 1, "kb": 10**3, "k": 10**3, "mb": 10**6, "m": 10**6, "gb": 10**9, "g": 10**9,
             "tb": 10**12, "t": 10**12}
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtb")
    try:
        size = float(number) * units[text[len(number):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 20GB, 500MB)") from None
    if not size >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {value!r}")
    return int(size)


def non_negative_count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def data_options() -> argparse.ArgumentParser:
    """A parent parser with --data."""
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", metavar="DIR",
                      help="the HaMeR data folder (default: $HAMER_HOME, else $XDG_CACHE_HOME/hamer or ~/.cache/hamer)")
    return data


def model_options() -> argparse.ArgumentParser:
    """A parent parser with --data and --checkpoint."""
    model = argparse.ArgumentParser(add_help=False, parents=[data_options()])
    model.add_argument("--checkpoint", metavar="PATH",
                       help="a checkpoint (.ckpt or .safetensors) other than DIR/" + configs.CHECKPOINT_FILE)
    return model
