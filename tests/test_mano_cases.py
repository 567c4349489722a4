"""MANO pickle loading on the cases the official-structure test does not reach: real scipy sparse pickles (CSC and
CSR, last column filled), Python 2 strings, and each malformed file named in its error."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hamer.models.mano import MANO, MANO_KEYS, _SparseMatrix, load_mano_pickle, mano_data_from_state_dict

from synthetic import mano_arrays, write_mano_pickle

sparse = pytest.importorskip("scipy.sparse")  # installed with scikit-image (the test extra)


def _regressor() -> np.ndarray:
    j_reg = np.zeros((16, 778))
    j_reg[np.arange(16), np.arange(16) * 7] = 0.25
    j_reg[np.arange(16), 777] = 0.75  # the last vertex (column) too: an off-by-one drops it
    j_reg[15, 0] = 0.5
    return j_reg


@pytest.mark.parametrize("kind", ["csc_matrix", "csr_matrix"])
def test_real_scipy_sparse_regressors_load_as_dense(tmp_path, kind):
    arrays = {k: v for k, v in mano_arrays(1).items() if k in MANO_KEYS}
    dense = _regressor()
    arrays["J_regressor"] = getattr(sparse, kind)(dense)
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    assert f"{kind}".encode() in path.read_bytes()
    np.testing.assert_array_equal(load_mano_pickle(path)["J_regressor"], dense)


def test_old_scipy_state_names_its_shape_shape():
    matrix = _SparseMatrix()
    matrix.__setstate__({"data": np.array([1.0, 2.0]), "indices": np.array([0, 2]), "indptr": np.array([0, 1, 2]),
                         "shape": (3, 2)})
    np.testing.assert_array_equal(matrix.todense(), [[1, 0], [0, 0], [0, 2]])


def test_python2_strings_are_latin1(tmp_path):
    arrays = {k: v for k, v in mano_arrays(1).items() if k in MANO_KEYS}
    raw = bytearray(pickle.dumps(arrays, protocol=2))
    assert raw.endswith(b"u.")  # SETITEMS, STOP: the dict is on the stack
    # one more item the Python 2 way: key and value as py2 str (SHORT_BINSTRING), one byte non-ASCII
    raw[-1:] = b"U\x04noteU\x04caf\xe9s."
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(bytes(raw))
    assert load_mano_pickle(path)["v_template"].shape == (778, 3)


def _written(tmp_path, edit) -> str:
    arrays = {k: v for k, v in mano_arrays(2).items()}
    edit(arrays)
    path = tmp_path / "MANO_RIGHT.pkl"
    write_mano_pickle(path, arrays)
    return str(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda a: a.update(shapedirs=a["shapedirs"][:, :, :5]), r"shapedirs has shape \(778, 3, 5\), expected"),
    (lambda a: a.update(shapedirs=a["shapedirs"][:700]), r"shapedirs has shape \(700, 3, 10\)"),
    (lambda a: a.update(posedirs=a["posedirs"][:, :, :100]), r"posedirs has shape \(778, 3, 100\), expected"),
    (lambda a: a.pop("weights"), r"lacks \['weights'\]"),
    (lambda a: a.pop("f"), r"lacks \['f'\]"),
])
def test_malformed_mano_is_named(tmp_path, edit, message):
    path = _written(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_mano_pickle(path)
    assert path in str(info.value)


def test_chumpy_without_its_array_and_non_dict_pickles(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match=f"MANO model {path} is not a dict pickle"):
        load_mano_pickle(path)
    arrays = mano_arrays(0)
    write_mano_pickle(tmp_path / "m.pkl", arrays)
    raw = (tmp_path / "m.pkl").read_bytes().replace(b"X\x01\x00\x00\x00x", b"X\x01\x00\x00\x00y")  # Ch's 'x' -> 'y'
    (tmp_path / "m.pkl").write_bytes(raw)
    with pytest.raises(ValueError, match="chumpy object has no array under 'x'"):
        load_mano_pickle(tmp_path / "m.pkl")


def test_checkpoint_without_mano_buffers_names_them():
    state = {f"mano.{k}": v for k, v in MANO({k: np.asarray(v) for k, v in mano_arrays(3).items()
                                               if k in MANO_KEYS}).state_dict().items()}
    del state["mano.posedirs"], state["mano.faces_tensor"]
    with pytest.raises(KeyError, match=r"\['mano.posedirs', 'mano.faces_tensor'\]"):
        mano_data_from_state_dict(state)
    state["mano.posedirs"] = torch.zeros(100, 778 * 3)
    state["mano.faces_tensor"] = torch.zeros(1538, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^checkpoint: MANO posedirs has shape \(778, 3, 100\)"):
        mano_data_from_state_dict(state)
