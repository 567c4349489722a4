"""Where the HaMeR data lives, and the model configuration.

``CACHE_DIR_HAMER`` is read when a model is built, not at import, so it can be set after ``import hamer.configs``.
The data folder has the layout of HaMeR's demo data::

    <CACHE_DIR_HAMER>/hamer_ckpts/checkpoints/hamer.ckpt   Lightning checkpoint (or a .safetensors from `hamer convert`)
    <CACHE_DIR_HAMER>/hamer_ckpts/model_config.yaml        the training config (inference reads a few keys)
    <CACHE_DIR_HAMER>/data/mano/MANO_RIGHT.pkl             MANO model (optional when the checkpoint carries it)
    <CACHE_DIR_HAMER>/data/mano_mean_params.npz            mean pose/shape/cam (optional likewise)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from yacs.config import CfgNode

from .models.variants import variant_config

CACHE_DIR_HAMER = "./hamer_ckpt/_DATA"

CHECKPOINT_FILE = "hamer_ckpts/checkpoints/hamer.ckpt"
CONFIG_FILE = "hamer_ckpts/model_config.yaml"
MANO_FILE = "data/mano/MANO_RIGHT.pkl"
MEAN_PARAMS_FILE = "data/mano_mean_params.npz"
CONFIG_METADATA_KEY = "hamer_config"  # the model config as JSON in safetensors and ONNX files' metadata

PathLike = str | os.PathLike


@dataclass(frozen=True)
class DataPaths:
    """Absolute paths of the files HaMeR inference reads from one data folder."""

    root: Path
    checkpoint: Path
    config: Path
    mano: Path
    mean_params: Path


def data_paths(root: PathLike | None = None, checkpoint: PathLike | None = None) -> DataPaths:
    """Paths inside the data folder ``root`` (default: ``CACHE_DIR_HAMER`` as set now).

    ``checkpoint`` overrides the checkpoint path; its config is then looked for two levels up, as the original does.
    """
    base = Path(root if root is not None else CACHE_DIR_HAMER).expanduser().resolve()
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint is not None else base / CHECKPOINT_FILE
    config = ckpt.parent.parent / "model_config.yaml" if checkpoint is not None else base / CONFIG_FILE
    return DataPaths(base, ckpt, config, base / MANO_FILE, base / MEAN_PARAMS_FILE)


def default_config() -> CfgNode:
    """The keys inference reads, with the released model's values (variant ``vit_h``: ViT-H backbone,
    transformer-decoder MANO head).

    ``MODEL.BACKBONE.EMBED_DIM/DEPTH/NUM_HEADS/MLP_RATIO`` are this package's own keys (the original hard-codes ViT-H);
    the sizes come from :mod:`hamer.models.variants`.
    """
    cfg = CfgNode(new_allowed=True)
    cfg.MODEL = CfgNode(new_allowed=True)
    cfg.MODEL.IMAGE_SIZE = 256
    cfg.MODEL.IMAGE_MEAN = [0.485, 0.456, 0.406]
    cfg.MODEL.IMAGE_STD = [0.229, 0.224, 0.225]
    cfg.MODEL.BBOX_SHAPE = [192, 256]
    sizes = variant_config("vit_h")["MODEL"]
    cfg.MODEL.BACKBONE = CfgNode({"TYPE": "vit", **sizes["BACKBONE"]}, new_allowed=True)
    cfg.MODEL.MANO_HEAD = CfgNode(new_allowed=True)
    cfg.MODEL.MANO_HEAD.TYPE = "transformer_decoder"
    cfg.MODEL.MANO_HEAD.IEF_ITERS = 1
    cfg.MODEL.MANO_HEAD.TRANSFORMER_INPUT = "zero"
    cfg.MODEL.MANO_HEAD.JOINT_REP = "6d"
    cfg.MODEL.MANO_HEAD.TRANSFORMER_DECODER = CfgNode(sizes["MANO_HEAD"]["TRANSFORMER_DECODER"], new_allowed=True)
    cfg.MANO = CfgNode(new_allowed=True)
    cfg.MANO.MODEL_PATH = "data/mano"
    cfg.MANO.MEAN_PARAMS = "data/mano_mean_params.npz"
    cfg.MANO.NUM_HAND_JOINTS = 15
    cfg.EXTRA = CfgNode(new_allowed=True)
    cfg.EXTRA.FOCAL_LENGTH = 5000
    return cfg


def merge_config(overrides: dict | CfgNode | None, source: str = "the model config") -> CfgNode:
    """The default config with ``overrides`` (a nested dict or CfgNode, e.g. a full training config) merged in.

    ValueError naming ``source`` (a file, say) when the result is not a config inference can use.
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"{source} is not a mapping of config keys (got {type(overrides).__name__})")
    merged = _as_plain_dict(default_config())
    _update(merged, _as_plain_dict(overrides or {}))
    problem = config_problem(merged)
    if problem:
        raise ValueError(f"{source}: {problem}")
    cfg = CfgNode(merged, new_allowed=True)
    cfg.freeze()
    return cfg


def config_from_json(text: str, source: str) -> CfgNode:
    """A config stored as JSON (safetensors and ONNX metadata); ValueError naming ``source`` when it is not one."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    return merge_config(raw, source)


def load_config(path: PathLike) -> CfgNode:
    """Read a HaMeR ``model_config.yaml`` (YAML, safely parsed) merged into :func:`default_config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:  # syntax errors, and tags such as !!python/object that safe_load refuses
        raise ValueError(f"model config {path} is not plain YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"model config {path} is not UTF-8 text: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"model config {path} is not a YAML mapping")
    return merge_config(raw, f"model config {path}")


_POSITIVE_INTS = {
    ("MODEL", "IMAGE_SIZE"), ("MODEL", "BACKBONE", "EMBED_DIM"), ("MODEL", "BACKBONE", "DEPTH"),
    ("MODEL", "BACKBONE", "NUM_HEADS"), ("MODEL", "MANO_HEAD", "IEF_ITERS"), ("MANO", "NUM_HAND_JOINTS"),
    *(("MODEL", "MANO_HEAD", "TRANSFORMER_DECODER", k) for k in ("dim", "depth", "heads", "dim_head", "mlp_dim",
                                                                "context_dim")),
}
_POSITIVE_NUMBERS = {("MODEL", "BACKBONE", "MLP_RATIO"), ("EXTRA", "FOCAL_LENGTH")}
_NUMBER_LISTS = {("MODEL", "IMAGE_MEAN"): 3, ("MODEL", "IMAGE_STD"): 3, ("MODEL", "BBOX_SHAPE"): 2}
MAX_IMAGE_SIZE = 1024  # HaMeR's crops are 256 px; a larger value is a broken config, not a model


def config_problem(cfg: dict) -> str | None:
    """What makes a merged config (plain nested dict) unusable for inference, or None."""
    keys = sorted(_POSITIVE_INTS | _POSITIVE_NUMBERS | set(_NUMBER_LISTS))
    for key in keys:
        node: object = cfg
        for depth, part in enumerate(key):
            if not isinstance(node, dict):
                return f"{'.'.join(key[:depth])} must be a mapping, got {node!r}"
            node = node.get(part)
        name = ".".join(key)
        if key in _POSITIVE_INTS and not (isinstance(node, int) and not isinstance(node, bool) and node > 0):
            return f"{name} must be a positive integer, got {node!r}"
        if key in _POSITIVE_NUMBERS and not (_is_number(node) and node > 0):
            return f"{name} must be a positive number, got {node!r}"
        if key in _NUMBER_LISTS and not (isinstance(node, list) and len(node) == _NUMBER_LISTS[key]
                                         and all(_is_number(v) and v > 0 for v in node)):
            return f"{name} must be a list of {_NUMBER_LISTS[key]} positive numbers, got {node!r}"
    if cfg["MODEL"]["IMAGE_SIZE"] > MAX_IMAGE_SIZE or cfg["MODEL"]["IMAGE_SIZE"] % 16:
        return f"MODEL.IMAGE_SIZE must be a multiple of 16 up to {MAX_IMAGE_SIZE}, got {cfg['MODEL']['IMAGE_SIZE']}"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_plain_dict(node: dict | CfgNode) -> dict:
    """A nested plain dict (CfgNode's bookkeeping attributes dropped)."""
    return {k: _as_plain_dict(v) if isinstance(v, dict) else v for k, v in node.items()}


def _update(base: dict, other: dict) -> None:
    """Recursively update ``base`` with ``other`` (values of ``other`` win; no type coercion)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update(base[key], value)
        else:
            base[key] = value


def check_supported(cfg: CfgNode) -> None:
    """Raise ValueError for a config this package cannot run (other backbones, heads or joint representations)."""
    problems = []
    if cfg.MODEL.BACKBONE.TYPE != "vit":
        problems.append(f"MODEL.BACKBONE.TYPE={cfg.MODEL.BACKBONE.TYPE!r} (only 'vit')")
    if cfg.MODEL.MANO_HEAD.TYPE != "transformer_decoder":
        problems.append(f"MODEL.MANO_HEAD.TYPE={cfg.MODEL.MANO_HEAD.TYPE!r} (only 'transformer_decoder')")
    if cfg.MODEL.MANO_HEAD.JOINT_REP != "6d":
        problems.append(f"MODEL.MANO_HEAD.JOINT_REP={cfg.MODEL.MANO_HEAD.JOINT_REP!r} (only '6d')")
    if cfg.MODEL.MANO_HEAD.TRANSFORMER_INPUT not in ("zero", "mean_shape"):
        problems.append(f"MODEL.MANO_HEAD.TRANSFORMER_INPUT={cfg.MODEL.MANO_HEAD.TRANSFORMER_INPUT!r}")
    if problems:
        raise ValueError("unsupported model config: " + "; ".join(problems))
