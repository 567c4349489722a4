"""The model config of a data folder's checkpoint, read without torch where the files allow.

The config comes from, first found: a safetensors checkpoint's own (its metadata, ``hamer convert``), the
``model_config.yaml`` beside the checkpoint (as the original reads it), the config a Lightning checkpoint carries
(inside its pickle: :mod:`hamer.checkpoint` reads it with torch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from yacs.config import CfgNode

from .configs import CONFIG_METADATA_KEY, DataPaths, check_supported, download_hint, load_config, merge_config

log = logging.getLogger(__name__)


def require_checkpoint(paths: DataPaths) -> None:
    """FileNotFoundError, with what to run to install it, when the data folder's own checkpoint is missing."""
    if not paths.checkpoint.is_file() and paths.checkpoint.is_relative_to(paths.root):
        raise FileNotFoundError(f"HaMeR checkpoint not found: {paths.checkpoint}; {download_hint(paths.root)}")


def safetensors_config(path: Path) -> dict | None:
    """The config a ``.safetensors`` checkpoint stores as JSON metadata (None if none), read from its header
    only; ValueError naming the file when it is unreadable or the metadata is not a JSON object."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read safetensors checkpoint {path} (truncated or corrupt?): {exc}") from exc
    if CONFIG_METADATA_KEY not in meta:
        return None
    try:
        config = json.loads(meta[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"safetensors checkpoint {path}: metadata '{CONFIG_METADATA_KEY}' is not valid JSON: "
                         f"{exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"safetensors checkpoint {path}: metadata '{CONFIG_METADATA_KEY}' is not a JSON object "
                         f"(got {type(config).__name__})")
    return config


def checkpoint_config(paths: DataPaths, stored: Callable[[], dict | None]) -> CfgNode:
    """The model config (see the module docstring); ``stored()``: the config the checkpoint carries, if any (called
    only when needed). FileNotFoundError when there is none; ValueError when it is not one inference supports."""
    safetensors = paths.checkpoint.suffix == ".safetensors"
    own = None if not safetensors and paths.config.is_file() else stored()  # a safetensors file's own wins
    if own is not None:
        if not safetensors:
            log.info("%s not found; using the config stored in the checkpoint", paths.config)
        cfg = merge_config(own, f"the config stored in {paths.checkpoint}")
    elif paths.config.is_file():
        cfg = load_config(paths.config)
    else:
        raise FileNotFoundError(f"model config not found: {paths.config} (and the checkpoint carries none)")
    check_supported(cfg)
    return cfg


def config_without_torch(paths: DataPaths) -> CfgNode | None:
    """:func:`checkpoint_config` when it needs no torch (a safetensors checkpoint, or ``model_config.yaml``
    present); None when only a Lightning checkpoint's pickle holds the config."""
    if paths.checkpoint.suffix == ".safetensors":
        return checkpoint_config(paths, lambda: safetensors_config(paths.checkpoint))
    if paths.config.is_file():
        return checkpoint_config(paths, lambda: None)
    return None
