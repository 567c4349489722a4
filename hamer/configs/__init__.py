"""Where the HaMeR data lives (set ``CACHE_DIR_HAMER`` here to choose it); the model configuration is read by
:mod:`hamer.configs.model_config` (its names are re-exported here).

The data folder (:func:`data_dir`) is, first match wins: ``CACHE_DIR_HAMER`` when the user sets it (it is None
until then), the ``HAMER_HOME`` environment variable, ``$XDG_CACHE_HOME/hamer`` (``~/.cache/hamer`` without it).
For the seed's users, ``./hamer_ckpt/_DATA`` (the seed's default) is still used, with a warning, when it holds a
checkpoint and the per-user folder does not. A relative path is made absolute against the working directory at the
moment it is resolved: when a ``HAMER`` is made, or when a command starts. The folder has the layout of HaMeR's demo
data (what ``hamer download`` installs)::

    <data folder>/hamer_ckpts/checkpoints/hamer.ckpt   Lightning checkpoint (or a .safetensors from `hamer convert`)
    <data folder>/hamer_ckpts/model_config.yaml        the training config (inference reads a few keys)
    <data folder>/data/mano/MANO_RIGHT.pkl             MANO model (optional when the checkpoint carries it)
    <data folder>/data/mano_mean_params.npz            mean pose/shape/cam (optional likewise)
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .model_config import (
    CONFIG_METADATA_KEY,
    FACES_METADATA_KEY,
    MAX_CONFIG_BYTES,
    MAX_YAML_DEPTH,
    PRECISIONS,
    BoundedYamlLoader,
    PathLike,
    check_precision,
    check_supported,
    config_from_json,
    config_problem,
    default_config,
    load_config,
    merge_config,
    read_yaml,
)

log = logging.getLogger(__name__)

CACHE_DIR_HAMER: str | os.PathLike | None = None  # set it to choose the data folder (wins over HAMER_HOME)
LEGACY_DATA_DIR = "./hamer_ckpt/_DATA"  # the seed's default, relative to the working directory
# Where the default CPU path caches its ONNX export (None: $HAMER_ONNX_CACHE, else ~/.cache/hamer/onnx); see
# hamer/onnx_cache.py.
ONNX_CACHE_DIR: str | os.PathLike | None = None

CHECKPOINT_FILE = "hamer_ckpts/checkpoints/hamer.ckpt"
SAFETENSORS_FILE = "hamer_ckpts/checkpoints/hamer.safetensors"  # `hamer download --safetensors` leaves this one
CONFIG_FILE = "hamer_ckpts/model_config.yaml"
MANO_FILE = "data/mano/MANO_RIGHT.pkl"
MEAN_PARAMS_FILE = "data/mano_mean_params.npz"

__all__ = [
    "CACHE_DIR_HAMER", "CONFIG_METADATA_KEY", "FACES_METADATA_KEY", "MAX_CONFIG_BYTES", "MAX_YAML_DEPTH",
    "ONNX_CACHE_DIR", "PRECISIONS", "BoundedYamlLoader", "DataPaths", "PathLike", "check_precision", "check_supported",
    "config_from_json", "config_problem", "data_dir", "data_paths", "default_config", "default_data_dir",
    "download_hint", "load_config", "merge_config", "read_yaml", "user_cache_dir",
]

@dataclass(frozen=True)
class DataPaths:
    """Absolute paths of the files HaMeR inference reads from one data folder."""

    root: Path
    checkpoint: Path
    config: Path
    mano: Path
    mean_params: Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hamer``, else ``~/.cache/hamer`` (user expanded, not resolved): the default data folder and
    the ONNX cache's parent."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hamer"


def default_data_dir() -> Path:
    """The per-user data folder: ``$HAMER_HOME``, else ``$XDG_CACHE_HOME/hamer``, else ``~/.cache/hamer``."""
    if os.environ.get("HAMER_HOME"):
        return Path(os.environ["HAMER_HOME"]).expanduser().resolve()
    return user_cache_dir().resolve()


def data_dir(root: PathLike | None = None) -> Path:
    """The data folder as an absolute path: ``root`` if given, else ``CACHE_DIR_HAMER`` if set, else
    :func:`default_data_dir` (or the seed's ``./hamer_ckpt/_DATA`` when only that one holds a checkpoint).

    Used by ``HAMER`` (once, when it is made) and by every command (``--data``).
    """
    if root is None:
        root = CACHE_DIR_HAMER
    if root is not None:
        return Path(root).expanduser().resolve()
    default = default_data_dir()
    legacy = Path(LEGACY_DATA_DIR).resolve()
    if not (default / CHECKPOINT_FILE).is_file() and (legacy / CHECKPOINT_FILE).is_file():
        _warn_legacy(legacy, default)
        return legacy
    return default


@functools.cache
def _warn_legacy(legacy: Path, default: Path) -> None:
    log.warning("using the HaMeR data in %s (the old default folder); move it to %s or set HAMER_HOME=%s",
                legacy, default, legacy)


def download_hint(root: Path) -> str:
    """What to run to install the weights into the data folder ``root``."""
    data = "" if root == data_dir() else f" --data {root}"
    return (f"run `hamer download{data}` (downloads HaMeR's demo data, about 5.6 GB, and installs 2.7 GB) or "
            "pass HAMER(download=True)")


def data_paths(root: PathLike | None = None, checkpoint: PathLike | None = None) -> DataPaths:
    """Paths inside the data folder ``root`` (default: :func:`data_dir`).

    ``checkpoint`` overrides the checkpoint path; its config is then looked for two levels up, as the original does.
    Without it, ``hamer.ckpt`` is used, or ``hamer.safetensors`` beside it when only that one exists.
    """
    base = data_dir(root)
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser().resolve()
    elif not (base / CHECKPOINT_FILE).is_file() and (base / SAFETENSORS_FILE).is_file():
        ckpt = base / SAFETENSORS_FILE
    else:
        ckpt = base / CHECKPOINT_FILE
    config = ckpt.parent.parent / "model_config.yaml" if checkpoint is not None else base / CONFIG_FILE
    return DataPaths(base, ckpt, config, base / MANO_FILE, base / MEAN_PARAMS_FILE)
