"""Small synthetic HaMeR assets with the official structure and random numbers.

- ``MANO_RIGHT.pkl``: a protocol-2 pickle as the official one: latin1-readable, ``shapedirs`` a ``chumpy.ch.Ch``
  object (array under ``x``), ``J_regressor`` a ``scipy.sparse.csc_matrix`` (778 vertices, 1538 faces, 16 joints).
  Neither chumpy nor scipy is needed: stand-in classes are registered under those module names while pickling.
- ``mano_mean_params.npz`` (pose 96, shape 10, cam 3), ``model_config.yaml`` (a training-style config with keys
  inference ignores), and a Lightning-format ``hamer.ckpt`` with random weights of a small ViT of the same
  architecture, the MANO buffers, a discriminator and ``initialized``.
"""

from __future__ import annotations

import contextlib
import copyreg
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml
from yacs.config import CfgNode

from hamer.configs import merge_config
from hamer.models.hamer import HaMeRNet
from hamer.models.mano import MANO
from hamer.models.variants import variant_config

MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]

SMALL_MODEL = variant_config("tiny")


def training_config(small: bool = True) -> dict:
    """A config shaped like the released ``model_config.yaml``: many keys inference ignores."""
    cfg = {
        "task_name": "train",
        "tags": ["dev"],
        "GENERAL": {"TOTAL_STEPS": 1000000, "NUM_WORKERS": 4, "MIXED_PRECISION": True},
        "TRAIN": {"LR": 1.0e-05, "BATCH_SIZE": 8, "WEIGHT_DECAY": 0.0001},
        "LOSS_WEIGHTS": {"KEYPOINTS_3D": 0.05, "ADVERSARIAL": 0.0005},
        "DATASETS": {"BETAS_REG": True, "CONFIG": {"SCALE_FACTOR": 0.3, "ROT_FACTOR": 30}},
        "MANO": {"DATA_DIR": "_DATA/data/", "MODEL_PATH": "data/mano", "GENDER": "neutral", "NUM_HAND_JOINTS": 15,
                 "MEAN_PARAMS": "data/mano_mean_params.npz", "CREATE_BODY_POSE": False},
        "EXTRA": {"FOCAL_LENGTH": 5000, "NUM_LOG_IMAGES": 4, "PELVIS_IND": 0},
        "MODEL": {
            "IMAGE_SIZE": 256, "IMAGE_MEAN": [0.485, 0.456, 0.406], "IMAGE_STD": [0.229, 0.224, 0.225],
            "BACKBONE": {"TYPE": "vit", "PRETRAINED_WEIGHTS": "hamer_training_data/vitpose_backbone.pth"},
            "MANO_HEAD": {"TYPE": "transformer_decoder", "IN_CHANNELS": 2048,
                          "TRANSFORMER_DECODER": {"depth": 6, "heads": 8, "mlp_dim": 1024, "dim_head": 64,
                                                  "dropout": 0.0, "emb_dropout": 0.0, "norm": "layer",
                                                  "context_dim": 1280}},
        },
    }
    if small:
        cfg["MODEL"]["BACKBONE"].update(SMALL_MODEL["MODEL"]["BACKBONE"])
        cfg["MODEL"]["MANO_HEAD"]["TRANSFORMER_DECODER"].update(SMALL_MODEL["MODEL"]["MANO_HEAD"]["TRANSFORMER_DECODER"])
    return cfg


def mano_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random MANO arrays of the official shapes, smooth enough to give finite, hand-sized output."""
    rng = np.random.default_rng(seed)
    v_template = (rng.normal(size=(778, 3)) * 0.03).astype(np.float64)
    j_reg = np.zeros((16, 778))
    for j in range(16):
        idx = rng.choice(778, size=8, replace=False)
        j_reg[j, idx] = rng.uniform(0.5, 1.0, size=8)
    j_reg /= j_reg.sum(1, keepdims=True)
    weights = rng.uniform(size=(778, 16)) ** 4
    weights /= weights.sum(1, keepdims=True)
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(size=(778, 3, 10)) * 1e-3,
        "posedirs": rng.normal(size=(778, 3, 135)) * 1e-3,
        "J_regressor": j_reg,
        "weights": weights,
        "kintree_table": np.array([[4294967295] + MANO_PARENTS[1:], list(range(16))], dtype=np.int64),
        "f": rng.integers(0, 778, size=(1538, 3)).astype(np.uint32),
        "hands_components": rng.normal(size=(45, 45)),
        "hands_mean": rng.normal(size=45) * 0.1,
        "hands_coeffs": rng.normal(size=(20, 45)),
        "J": rng.normal(size=(16, 3)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@contextlib.contextmanager
def _fake_modules():
    """Register stand-ins for ``chumpy.ch.Ch`` and ``scipy.sparse.csc.csc_matrix`` while pickling."""
    ch_mod, sp_mod = types.ModuleType("chumpy.ch"), types.ModuleType("scipy.sparse.csc")
    Ch = type("Ch", (), {"__module__": "chumpy.ch",
                         "__reduce_ex__": lambda self, proto: (copyreg._reconstructor, (type(self), object, None),
                                                               self.__dict__)})
    csc = type("csc_matrix", (), {"__module__": "scipy.sparse.csc"})
    ch_mod.Ch, sp_mod.csc_matrix = Ch, csc
    names = {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch_mod, "scipy": types.ModuleType("scipy"),
             "scipy.sparse": types.ModuleType("scipy.sparse"), "scipy.sparse.csc": sp_mod}
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(names)
    try:
        yield Ch, csc
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def write_mano_pickle(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Pickle ``arrays`` like the official MANO_RIGHT.pkl (chumpy shapedirs, sparse CSC J_regressor)."""
    data = dict(arrays)
    with _fake_modules() as (Ch, csc):
        ch = Ch()
        ch.__dict__.update({"x": arrays["shapedirs"], "_dirty_vars": set()})
        dense = arrays["J_regressor"]
        cols = [np.nonzero(dense[:, c])[0] for c in range(dense.shape[1])]
        sparse = csc()
        sparse.__dict__.update({
            "data": np.concatenate([dense[r, c] for c, r in enumerate(cols)]),
            "indices": np.concatenate(cols).astype(np.int32),
            "indptr": np.cumsum([0] + [len(r) for r in cols]).astype(np.int32),
            "_shape": dense.shape,
            "maxprint": 50,
        })
        data["shapedirs"], data["J_regressor"] = ch, sparse
        raw = pickle.dumps(data, protocol=2)
    # numpy 1.x (as the official file) names its array reconstructor numpy.core.multiarray
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


def mean_params(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pose = np.tile([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 16) + rng.normal(size=96) * 0.05
    return {"pose": pose, "shape": rng.normal(size=10) * 0.1, "cam": np.array([0.9, 0.01, -0.02])}


def random_model(cfg: CfgNode, mano: dict[str, np.ndarray], means: dict[str, np.ndarray], seed: int = 0) -> HaMeRNet:
    """A HaMeRNet of ``cfg`` with random weights (std 0.02, LayerNorms at 1 +- noise)."""
    torch.manual_seed(seed)
    model = HaMeRNet(cfg, MANO(mano))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm1." in name or ".norm2." in name or "last_norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.02 * torch.randn_like(p))
        model.mano_head.init_hand_pose.copy_(torch.from_numpy(means["pose"]).float()[None])
        model.mano_head.init_betas.copy_(torch.from_numpy(means["shape"]).float()[None])
        model.mano_head.init_cam.copy_(torch.from_numpy(means["cam"]).float()[None])
    return model.eval()


def lightning_checkpoint(model: HaMeRNet, cfg_dict: dict) -> dict:
    """The dict a PyTorch Lightning checkpoint of HaMeR holds."""
    state_dict = dict(model.state_dict())
    state_dict["discriminator.D_conv1.weight"] = torch.randn(32, 9, 1, 1)
    state_dict["initialized"] = torch.tensor(True)
    return {
        "epoch": 10,
        "global_step": 1000,
        "pytorch-lightning_version": "2.0.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 10}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/ckpt"}},
        "hyper_parameters": {"cfg": CfgNode(cfg_dict)},
    }


def make_data_dir(root: Path, small: bool = True, with_mano: bool = True, with_means: bool = True,
                  with_config: bool = True, seed: int = 0) -> HaMeRNet:
    """Write a complete HaMeR data folder under ``root``; returns the model whose weights it holds."""
    cfg_dict = training_config(small)
    mano = mano_arrays(seed)
    means = mean_params(seed + 1)
    if with_mano:
        write_mano_pickle(root / "data/mano/MANO_RIGHT.pkl", mano)
    if with_means:
        (root / "data").mkdir(parents=True, exist_ok=True)
        np.savez(root / "data/mano_mean_params.npz", **means)
    ckpt_dir = root / "hamer_ckpts/checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if with_config:
        (root / "hamer_ckpts/model_config.yaml").write_text(yaml.safe_dump(cfg_dict))
    model = random_model(merge_config(cfg_dict), mano_from_arrays(mano), means, seed)
    torch.save(lightning_checkpoint(model, cfg_dict), ckpt_dir / "hamer.ckpt")
    return model


def mano_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as ``load_mano_pickle`` returns them (only the keys the model reads)."""
    from hamer.models.mano import MANO_KEYS

    return {k: np.asarray(arrays[k]) for k in MANO_KEYS}


def ensure_data_dir(root: Path, small: bool = True) -> Path:
    """``root``, holding the data folder of :func:`make_data_dir` (written only when it has no checkpoint yet):
    benchmarks reuse the full-size folder (2.7 GB) between runs."""
    if not (root / "hamer_ckpts/checkpoints/hamer.ckpt").is_file():
        print(f"writing the {'small' if small else 'full-size'} random-weight data folder to {root} ...", flush=True)
        make_data_dir(root, small=small)
    return root
