"""The network: the full-size state_dict layout of the original, and the head's formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hamer.configs import default_config
from hamer.models.hamer import HaMeRNet
from hamer.models.head import rot6d_to_rotmat
from hamer.models.mano import MANO, MANO_KEYS

from synthetic import mano_arrays

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hamer_state_dict.tsv"


def _reference_layout() -> dict[str, tuple[tuple[int, ...], str]]:
    layout = {}
    for line in REFERENCE.read_text().splitlines()[1:]:
        name, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        layout[name] = (dims, dtype)
    return layout


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} not present (../shared/reference)")
def test_full_size_state_dict_matches_the_original_layout():
    reference = _reference_layout()
    assert len(reference) == 563
    training_only = {k for k in reference if k.startswith("discriminator.") or k == "initialized"}
    mano = MANO({k: np.asarray(v) for k, v in mano_arrays().items() if k in MANO_KEYS})
    with torch.device("meta"):
        model = HaMeRNet(default_config(), mano)
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    expected = {k: v for k, v in reference.items() if k not in training_only}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert 630e6 < backbone < 632e6  # ViT-H: about 631 M


def test_rot6d_matches_gram_schmidt_columns():
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    rot = rot6d_to_rotmat(x)
    a1, a2 = x[:, :3], x[:, 3:]  # the original's layout: reshape(-1, 2, 3) rows are the two columns
    b1 = a1 / a1.norm(dim=1, keepdim=True)
    b2 = a2 - (b1 * a2).sum(1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=1, keepdim=True)
    torch.testing.assert_close(rot[:, :, 0], b1)
    torch.testing.assert_close(rot[:, :, 1], b2)
    torch.testing.assert_close(rot[:, :, 2], torch.cross(b1, b2, dim=1))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    identity = rot6d_to_rotmat(torch.tensor([[1.0, 0, 0, 0, 1, 0]]))
    torch.testing.assert_close(identity[0], torch.eye(3))


def test_camera_translation_formula(data_dir, reference_model):
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = reference_model(x)
    s, tx, ty = out["pred_cam"].unbind(1)
    torch.testing.assert_close(out["pred_cam_t"], torch.stack([tx, ty, 2 * 5000 / (256 * s + 1e-9)], dim=1))
    torch.testing.assert_close(out["focal_length"], torch.full((2, 2), 5000.0))
    p = out["pred_keypoints_3d"] + out["pred_cam_t"][:, None]
    torch.testing.assert_close(out["pred_keypoints_2d"], 5000 / 256 * p[..., :2] / p[..., 2:])


def test_backbone_sees_only_the_central_columns(reference_model):
    x = torch.randn(1, 3, 256, 256)
    y = x.clone()
    y[..., :32] = 5.0
    y[..., -32:] = -5.0
    with torch.no_grad():
        a, b = reference_model(x), reference_model(y)
    torch.testing.assert_close(a["pred_keypoints_3d"], b["pred_keypoints_3d"], rtol=0, atol=0)
