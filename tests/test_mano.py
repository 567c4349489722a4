"""MANO pickle loading without chumpy, and HaMeR's 21-joint MANO layer."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import smplx
import torch
from smplx.utils import Struct

from hamer.models.mano import (
    FINGERTIP_VERTICES,
    MANO,
    MANO_KEYS,
    MANO_TO_OPENPOSE,
    load_mano_pickle,
    mano_data_from_state_dict,
)

from synthetic import mano_arrays, write_mano_pickle


def test_official_structure_loads_without_chumpy_or_scipy(tmp_path):
    arrays = mano_arrays(3)
    path = tmp_path / "MANO_RIGHT.pkl"
    write_mano_pickle(path, arrays)
    raw = path.read_bytes()
    assert b"chumpy.ch" in raw and b"scipy.sparse.csc" in raw and b"copy_reg" in raw  # the official pickle's shape
    data = load_mano_pickle(path)
    assert set(data) == set(MANO_KEYS)
    for key in MANO_KEYS:
        np.testing.assert_array_equal(data[key], arrays[key], err_msg=key)


def test_pickle_with_foreign_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not allowed"):
        load_mano_pickle(path)
    assert not marker.exists()


def test_missing_and_malformed_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match="MANO model not found"):
        load_mano_pickle(tmp_path / "nope.pkl")
    arrays = mano_arrays()
    arrays["v_template"] = arrays["v_template"][:700]
    write_mano_pickle(tmp_path / "bad.pkl", arrays)
    with pytest.raises(ValueError, match="v_template has shape"):
        load_mano_pickle(tmp_path / "bad.pkl")
    (tmp_path / "trunc.pkl").write_bytes((tmp_path / "bad.pkl").read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read MANO model"):
        load_mano_pickle(tmp_path / "trunc.pkl")


def _random_pose(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    aa = 0.4 * torch.randn(batch, 16, 3, generator=g)
    rot = smplx.lbs.batch_rodrigues(aa.reshape(-1, 3)).reshape(batch, 16, 3, 3)
    return {"global_orient": rot[:, :1], "hand_pose": rot[:, 1:], "betas": torch.randn(batch, 10, generator=g)}


def test_joints_are_smplx_joints_plus_fingertips_in_openpose_order():
    data = {k: np.asarray(v) for k, v in mano_arrays(1).items() if k in MANO_KEYS}
    ours = MANO(data)
    reference = smplx.MANOLayer(model_path="", data_struct=Struct(**data))
    params = _random_pose(3)
    out = ours(**params)
    ref = reference(**params)
    assert out.joints.shape == (3, 21, 3) and out.vertices.shape == (3, 778, 3)
    j16 = ref.joints
    expected = torch.cat([j16, ref.vertices[:, FINGERTIP_VERTICES]], dim=1)[:, MANO_TO_OPENPOSE]
    torch.testing.assert_close(out.joints, expected, rtol=0, atol=0)
    # spot-check the order: OpenPose 4 is the thumb tip (vertex 744), 8 the index tip (320), 20 the pinky tip (671)
    torch.testing.assert_close(out.joints[:, 4], ref.vertices[:, 744], rtol=0, atol=0)
    torch.testing.assert_close(out.joints[:, 8], ref.vertices[:, 320], rtol=0, atol=0)
    torch.testing.assert_close(out.joints[:, 20], ref.vertices[:, 671], rtol=0, atol=0)
    torch.testing.assert_close(out.joints[:, 0], j16[:, 0], rtol=0, atol=0)  # wrist


def test_mano_rebuilt_from_checkpoint_buffers_matches_pickle():
    data = {k: np.asarray(v) for k, v in mano_arrays(2).items() if k in MANO_KEYS}
    original = MANO(data)
    rebuilt = MANO(mano_data_from_state_dict({f"mano.{k}": v for k, v in original.state_dict().items()}))
    for key, value in original.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0, msg=key)
    params = _random_pose(2, seed=5)
    torch.testing.assert_close(rebuilt(**params).joints, original(**params).joints, rtol=0, atol=0)
