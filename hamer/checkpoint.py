"""Loading HaMeR weights: the released Lightning checkpoint (or a safetensors file) into :class:`HaMeRNet`.

No pickled code runs: the Lightning checkpoint is read with ``torch.load(weights_only=True)``, its yacs ``CfgNode``
mapped to a plain ``OrderedDict`` and any other non-tensor class of the training metadata to an inert stand-in.
Weights are memory-mapped and assigned to a model built on the meta device, so loading holds one copy of them.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from yacs.config import CfgNode

from .checkpoint_config import checkpoint_config, require_checkpoint, safetensors_config
from .configs import CONFIG_METADATA_KEY, DataPaths
from .files import atomic_path, give_default_permissions
from .models.mano import MANO, load_mano_pickle, mano_data_from_state_dict

if TYPE_CHECKING:
    from .models.hamer import HaMeRNet

log = logging.getLogger(__name__)

NETWORK_PREFIXES = ("backbone.", "mano_head.")
# dict subclasses of training metadata, read as plain OrderedDicts: torch's weights-only unpickler fills only
# dict, OrderedDict and Counter (yacs' config, and Lightning's hyper-parameter containers)
DICT_CLASSES = ("yacs.config.CfgNode", "pytorch_lightning.utilities.parsing.AttributeDict",
                "lightning_fabric.utilities.data.AttributeDict", "lightning.fabric.utilities.data.AttributeDict")
# torch's allow-list of unpickled classes (``safe_globals``) is process-wide: one loader at a time sets it, so that
# one load's exit never removes it under another's.
_SAFE_GLOBALS_LOCK = threading.Lock()
MEAN_PARAM_BUFFERS = {"pose": "mano_head.init_hand_pose", "shape": "mano_head.init_betas", "cam": "mano_head.init_cam"}


@dataclass
class Checkpoint:
    """Weights by name (CPU tensors, possibly memory-mapped) and the training config stored with them, if any."""

    state_dict: dict[str, torch.Tensor]
    config: dict | None


class _Opaque:
    """Inert stand-in for a class of the checkpoint's training metadata (never called, only records its state)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _plain(value: Any) -> Any:
    """Nested OrderedDicts (unpickled CfgNodes) -> plain dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_lightning_checkpoint(path: Path, mmap: bool = True) -> Checkpoint:
    """Read a PyTorch Lightning checkpoint: ``state_dict`` and ``hyper_parameters['cfg']`` (as a dict).
    ``mmap``: weights memory-mapped from the file (read on first use); False: read into memory now, so that a
    weight replaced in the model is freed (see :func:`hamer.export.write_onnx`)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a PyTorch zip checkpoint (truncated or not a checkpoint?)")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        opaque = sorted(name for name in unsafe if name not in DICT_CLASSES)
        allowed: list = [(OrderedDict, name) for name in DICT_CLASSES] + [(_Opaque, name) for name in opaque]
        if opaque:
            log.info("checkpoint metadata classes read as inert stand-ins: %s", opaque)
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(allowed):
            raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"checkpoint {path} holds content that is never unpickled here: {exc}") from None
    except (RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read checkpoint {path} (truncated or corrupt?): {exc}") from exc
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"checkpoint {path} has no 'state_dict' (not a HaMeR Lightning checkpoint)")
    weights = raw["state_dict"]
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)] if isinstance(weights, dict) else None
    if bad is None or bad:
        what = f"non-tensor entries {_first(sorted(map(str, bad)))}" if bad else "no mapping of weights"
        raise ValueError(f"checkpoint {path}: 'state_dict' holds {what}")
    hparams = raw.get("hyper_parameters") or {}
    config = _plain(hparams["cfg"]) if isinstance(hparams, dict) and isinstance(hparams.get("cfg"), dict) else None
    return Checkpoint(dict(raw["state_dict"]), config)


def load_safetensors_checkpoint(path: Path) -> Checkpoint:
    """Read a file written by ``hamer convert``: weights plus the config as JSON metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = safetensors_config(path)
    try:
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read safetensors checkpoint {path} (truncated or corrupt?): {exc}") from exc
    return Checkpoint(state_dict, config)


def load_checkpoint(path: Path, mmap: bool = True) -> Checkpoint:
    """A Lightning ``.ckpt`` (``mmap``: see :func:`load_lightning_checkpoint`) or a ``.safetensors`` file (read
    into memory), by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HaMeR checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors_checkpoint(path)
    return load_lightning_checkpoint(path, mmap)


MEAN_PARAM_SIZES = {"pose": 96, "shape": 10, "cam": 3}


def read_mean_params(path: Path) -> dict[str, np.ndarray]:
    """``pose`` (96,), ``shape`` (10,), ``cam`` (3,) float32 from ``mano_mean_params.npz`` (no pickles);
    ValueError naming the file when it is not such a file."""
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
        if any(size > 2**20 for size in sizes.values()):
            raise ValueError("an array is larger than 1 MiB")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in MEAN_PARAM_SIZES if k not in npz]
            if missing:
                raise ValueError(f"lacks {missing}")
            arrays = {k: np.asarray(npz[k], dtype=np.float32).reshape(-1) for k in MEAN_PARAM_SIZES}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"mean parameters {path}: {exc} (truncated or not mano_mean_params.npz?)") from None
    wrong = {k: a.size for k, a in arrays.items() if a.size != MEAN_PARAM_SIZES[k]}
    if wrong:
        raise ValueError(f"mean parameters {path}: sizes {wrong}, expected {MEAN_PARAM_SIZES}")
    return arrays


def _mean_params(paths: DataPaths, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head's ``init_*`` buffers from ``mano_mean_params.npz``; the checkpoint's values win, as in the original."""
    out: dict[str, torch.Tensor] = {}
    if paths.mean_params.is_file():
        out.update({MEAN_PARAM_BUFFERS[k]: torch.from_numpy(v).unsqueeze(0)
                    for k, v in read_mean_params(paths.mean_params).items()})
    out.update({name: state_dict[name] for name in MEAN_PARAM_BUFFERS.values() if name in state_dict})
    missing = [name for name in MEAN_PARAM_BUFFERS.values() if name not in out]
    if missing:
        raise FileNotFoundError(
            f"MANO mean parameters not found: no {paths.mean_params} and the checkpoint lacks {missing}"
        )
    return out


def _mano_data(paths: DataPaths, state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """MANO arrays from ``MANO_RIGHT.pkl`` when present, else from the buffers the checkpoint carries."""
    if paths.mano.is_file():
        return load_mano_pickle(paths.mano)
    try:
        data = mano_data_from_state_dict(state_dict)
    except KeyError as exc:
        raise FileNotFoundError(f"MANO model not found: no {paths.mano} and {exc.args[0]}") from None
    log.info("MANO_RIGHT.pkl not found; MANO built from the checkpoint's buffers")
    return data


def read_checkpoint(paths: DataPaths) -> tuple[Checkpoint, CfgNode]:
    """The checkpoint of a data folder (weights memory-mapped, not read) and its model config
    (:func:`hamer.checkpoint_config.checkpoint_config`), without building the model (which imports timm and
    torchvision: about 190 MB of resident memory)."""
    require_checkpoint(paths)
    checkpoint = load_checkpoint(paths.checkpoint)
    return checkpoint, checkpoint_config(paths, lambda: checkpoint.config)


def build_model(paths: DataPaths, read: tuple[Checkpoint, CfgNode] | None = None
                ) -> tuple[HaMeRNet, CfgNode]:
    """Build HaMeR from a data folder: CPU, float32, eval mode. ``read``: :func:`read_checkpoint`'s result for
    ``paths`` when the caller has it.

    Backbone and head weights are checked strictly. MANO is built from ``MANO_RIGHT.pkl`` (else from the
    checkpoint) and, as in the original's non-strict Lightning load, the checkpoint's ``mano.*`` and
    ``mano_head.init_*`` buffers then override the pickle's and the npz's values.
    """
    from .models.hamer import HaMeRNet

    checkpoint, cfg = read if read is not None else read_checkpoint(paths)
    sd = checkpoint.state_dict
    mano_data = _mano_data(paths, sd)

    mano = MANO(mano_data)
    with torch.device("meta"):
        model = HaMeRNet(cfg, mano)
    weights = _mean_params(paths, sd)
    weights.update({k: v for k, v in sd.items() if k.startswith(NETWORK_PREFIXES)})
    model_keys = model.state_dict().keys()
    weights.update({k: v for k, v in sd.items() if k.startswith("mano.") and k in model_keys})
    _check_weights(model, weights, paths.checkpoint)
    model.load_state_dict(weights, strict=False, assign=True)
    return model.float().eval(), cfg


def _check_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    """Raise ValueError naming every missing, unexpected or misshapen backbone/head weight (MANO's are optional)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in set(expected) - set(weights) if k.startswith(NETWORK_PREFIXES))
    unexpected = sorted(set(weights) - set(expected))
    misshapen = [f"{k} {tuple(weights[k].shape)} (model {expected[k]})"
                 for k in expected if k in weights and tuple(weights[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if misshapen:
        problems.append(f"wrong shape {_first(misshapen)}")
    if problems:
        raise ValueError(f"checkpoint {source} does not fit the model config: " + "; ".join(problems))


def _first(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def save_safetensors(model: HaMeRNet, cfg: Mapping, path: Path, half: bool = False) -> None:
    """Write everything :func:`build_model` needs as one safetensors file that :func:`load_checkpoint` reads.

    The tensors are ``model.state_dict()`` (backbone, head with its ``init_*`` mean parameters, MANO buffers); the
    config (e.g. the ``cfg`` :func:`build_model` returns) is stored as JSON under metadata key
    :data:`~hamer.configs.CONFIG_METADATA_KEY`. ``half`` stores floating tensors as float16 (``build_model`` casts
    them back to float32); ValueError if a value would overflow float16. The file is written whole or not at all
    (:func:`~hamer.files.atomic_path`); ``hamer convert`` and ``hamer download --safetensors`` both write with it.
    """
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            halved = tensor.half()
            if bool((torch.isinf(halved) & torch.isfinite(tensor)).any()):
                raise ValueError(f"{name} has values beyond float16's range; convert without half precision")
            tensor = halved
        tensors[name] = tensor.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_METADATA_KEY: json.dumps(cfg)})
        give_default_permissions(tmp)
