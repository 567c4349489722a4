"""The model configuration: HaMeR's training config (``model_config.yaml``), read by a bounded YAML reader, merged
onto the defaults of the registered variants, and checked for what inference supports."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml
from yacs.config import CfgNode

from ..models.variants import variant_config

CONFIG_METADATA_KEY = "hamer_config"  # the model config as JSON in safetensors and ONNX files' metadata
FACES_METADATA_KEY = "hamer_mano_faces"  # MANO's (1538, 3) triangles as JSON in ONNX files' metadata, for meshes
PRECISIONS = ("fp32", "bf16", "fp16")  # the network's precisions (hamer.torch_runtime); here, where no torch is needed

MAX_CONFIG_BYTES = 1_000_000  # a model config's limit, file or JSON text (HaMeR's model_config.yaml: about 3 kB)
MAX_YAML_DEPTH = 64  # nesting levels in a model config (HaMeR's has 5)

PathLike = str | os.PathLike


def check_precision(precision: str, device_type: str) -> None:
    """ValueError for a precision other than :data:`PRECISIONS`, or fp16 on a device type other than "cuda"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")


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
    if isinstance(text, (str, bytes)) and len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{source}: the config is {len(text):,} characters, more than a model config may have "
                         f"({MAX_CONFIG_BYTES:,})")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{source}: the config is nested too deeply") from None
    return merge_config(raw, source)


class BoundedYamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses aliases (``*name``: a few bytes may expand to gigabytes, the "billion
    laughs") and nesting deeper than :data:`MAX_YAML_DEPTH`, when it meets them, before anything is expanded.
    Without aliases a document of n bytes makes at most about n nodes: the size cap bounds time and memory."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refused (aliases are not allowed "
                                              "in a model config)", event.start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: PathLike) -> object:
    """The YAML document in ``path``, parsed by :class:`BoundedYamlLoader` (no tags, no aliases); ValueError naming
    the file when it is larger than :data:`MAX_CONFIG_BYTES` (refused unread), not UTF-8 or not such YAML."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""  # bounded if it grows meanwhile
    if max(size, len(data)) > MAX_CONFIG_BYTES:
        raise ValueError(f"model config {path} is {max(size, len(data)):,} bytes: larger than the "
                         f"{MAX_CONFIG_BYTES:,} bytes a model config may have; refused unread")
    try:
        return yaml.load(data.decode("utf-8"), Loader=BoundedYamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:  # syntax errors, aliases, and tags such as !!python/object that SafeLoader refuses
        raise ValueError(f"model config {path} is not plain YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"model config {path} is not UTF-8 text: {exc}") from None


def load_config(path: PathLike) -> CfgNode:
    """Read a HaMeR ``model_config.yaml`` (:func:`read_yaml`: bounded, plain YAML) merged into
    :func:`default_config`; FileNotFoundError without it, ValueError naming the file when it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    raw = read_yaml(path)
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
