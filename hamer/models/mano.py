"""MANO as HaMeR uses it: smplx's MANOLayer, 16 skeleton joints + 5 fingertip vertices in OpenPose order.

``MANO_RIGHT.pkl`` is a Python-2 pickle whose ``shapedirs`` is a ``chumpy.ch.Ch`` and ``J_regressor`` a scipy sparse
matrix. :func:`load_mano_pickle` reads it with a restricted unpickler (no chumpy, no scipy, no arbitrary code):
only numpy's array reconstruction and inert stand-ins for the chumpy and sparse classes are allowed.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import smplx
import torch
from smplx.utils import MANOOutput, Struct

log = logging.getLogger(__name__)

MANO_TO_OPENPOSE = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
FINGERTIP_VERTICES = [744, 320, 443, 554, 671]  # thumb, index, middle, ring, pinky tips (smplx vertex_ids["mano"])
NUM_VERTICES = 778
NUM_FACES = 1538

MANO_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
             "hands_components", "hands_mean")


class _Pickled:
    """Inert stand-in for a pickled class we do not import: it only records its state."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChumpyArray(_Pickled):
    """Stand-in for ``chumpy.ch.Ch`` (its array is ``state['x']``)."""


MAX_DENSE_ELEMENTS = 10_000_000  # MANO's J_regressor is 16 x 778; a larger matrix is not a MANO model


class _SparseMatrix(_Pickled):
    """Stand-in for a scipy compressed sparse matrix (``data``, ``indices``, ``indptr``, ``_shape`` in its state)."""

    by_column = True

    def todense(self) -> np.ndarray:
        """The dense array; ValueError when the state is not a sparse matrix of a sane size."""
        st = self.state if isinstance(self.state, dict) else {}
        missing = [k for k in ("data", "indices", "indptr") if k not in st] + ([] if "_shape" in st or "shape" in st
                                                                               else ["_shape"])
        if missing:
            raise ValueError(f"a sparse matrix lacks {missing}")
        shape = tuple(int(n) for n in (st["_shape"] if "_shape" in st else st["shape"]))
        if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > MAX_DENSE_ELEMENTS:
            raise ValueError(f"a sparse matrix has shape {shape} (at most {MAX_DENSE_ELEMENTS} elements)")
        data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
        dense = np.zeros(shape if self.by_column else shape[::-1], dtype=data.dtype)
        for i in range(len(indptr) - 1):
            dense[indices[indptr[i] : indptr[i + 1]], i] = data[indptr[i] : indptr[i + 1]]
        return dense if self.by_column else dense.T


class _CSRMatrix(_SparseMatrix):
    by_column = False


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _MANOUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy arrays and stand-ins for chumpy and scipy.sparse classes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyArray
        if module.startswith("scipy.sparse") and name == "csc_matrix":
            return _SparseMatrix
        if module.startswith("scipy.sparse") and name == "csr_matrix":
            return _CSRMatrix
        raise pickle.UnpicklingError(f"MANO pickle refers to {module}.{name}, which is not allowed")


def _to_array(value: Any) -> Any:
    """Replace chumpy / sparse stand-ins by dense numpy arrays."""
    if isinstance(value, _ChumpyArray):
        state = value.state if isinstance(value.state, dict) else {}
        if "x" not in state:
            raise ValueError("MANO pickle: a chumpy object has no array under 'x'")
        return np.asarray(state["x"])
    if isinstance(value, _SparseMatrix):
        return value.todense()
    return value


def load_mano_pickle(path: Path) -> dict[str, np.ndarray]:
    """Read the official ``MANO_RIGHT.pkl`` into a dict of numpy arrays (the keys in ``MANO_KEYS``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MANO model not found: {path}")
    with open(path, "rb") as f:
        try:
            raw = _MANOUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read MANO model {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"MANO model {path} is not a dict pickle")
    missing = [k for k in MANO_KEYS if k not in raw]
    if missing:
        raise ValueError(f"MANO model {path} lacks {missing}")
    try:
        data = {k: np.asarray(_to_array(raw[k])) for k in MANO_KEYS}
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"MANO model {path}: {exc}") from None
    check_mano_data(data, str(path))
    return data


def check_mano_data(data: Mapping[str, np.ndarray], source: str) -> None:
    """Raise ValueError unless the arrays have MANO's shapes (778 vertices, 1538 faces, 16 joints)."""
    expected = {
        "v_template": (NUM_VERTICES, 3),
        "J_regressor": (16, NUM_VERTICES),
        "weights": (NUM_VERTICES, 16),
        "f": (NUM_FACES, 3),
    }
    for key, shape in expected.items():
        if tuple(data[key].shape) != shape:
            raise ValueError(f"{source}: MANO {key} has shape {tuple(data[key].shape)}, expected {shape}")
    if data["shapedirs"].shape[:2] != (NUM_VERTICES, 3) or data["shapedirs"].shape[2] < 10:
        raise ValueError(f"{source}: MANO shapedirs has shape {data['shapedirs'].shape}, expected (778, 3, >=10)")
    if data["posedirs"].shape != (NUM_VERTICES, 3, 135):
        raise ValueError(f"{source}: MANO posedirs has shape {data['posedirs'].shape}, expected (778, 3, 135)")


def mano_data_from_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "mano.") -> dict[str, np.ndarray]:
    """Rebuild the MANO arrays from the buffers HaMeR's checkpoint carries (``mano.v_template`` ...)."""
    names = ["v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "hand_components", "hand_mean",
             "parents", "faces_tensor"]
    missing = [prefix + n for n in names if prefix + n not in state_dict]
    if missing:
        raise KeyError(f"checkpoint lacks MANO buffers {missing}")
    sd = {n: state_dict[prefix + n].detach().float().cpu().numpy() for n in names[:-2]}
    parents = state_dict[prefix + "parents"].cpu().numpy().astype(np.int64)
    num_basis = sd["posedirs"].shape[0]
    data = {
        "v_template": sd["v_template"],
        "shapedirs": sd["shapedirs"],
        "posedirs": sd["posedirs"].T.reshape(NUM_VERTICES, 3, num_basis),
        "J_regressor": sd["J_regressor"],
        "weights": sd["lbs_weights"],
        "kintree_table": np.stack([parents, np.arange(len(parents))]),
        "f": state_dict[prefix + "faces_tensor"].cpu().numpy(),
        "hands_components": sd["hand_components"],
        "hands_mean": sd["hand_mean"],
    }
    check_mano_data(data, "checkpoint")
    return data


class MANO(smplx.MANOLayer):
    """smplx's right-hand MANOLayer returning HaMeR's 21 joints (OpenPose order) in metres, model frame."""

    def __init__(self, data: Mapping[str, np.ndarray]) -> None:
        with contextlib.redirect_stdout(io.StringIO()) as smplx_says:  # smplx prints a note on 10 betas
            super().__init__(model_path="", data_struct=Struct(**data), is_rhand=True, create_body_pose=False)
        if smplx_says.getvalue().strip():
            log.debug("smplx: %s", smplx_says.getvalue().strip())
        self.register_buffer("extra_joints_idxs", torch.tensor(FINGERTIP_VERTICES, dtype=torch.long))
        self.register_buffer("joint_map", torch.tensor(MANO_TO_OPENPOSE, dtype=torch.long))

    def forward(self, *args: Any, **kwargs: Any) -> MANOOutput:
        """As MANOLayer (rotation matrices, ``pose2rot=False``); ``joints`` becomes (B, 21, 3)."""
        out = super().forward(*args, **kwargs)
        tips = torch.index_select(out.vertices, 1, self.extra_joints_idxs)
        out.joints = torch.cat([out.joints, tips], dim=1)[:, self.joint_map, :]
        return out
