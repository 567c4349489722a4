"""ONNX export, the ONNX Runtime backend, 8-bit weights and bf16, on the small synthetic model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import hamer.export
from hamer.checkpoint import build_model
from hamer.configs import data_paths
from hamer.export import export_onnx, quantize_onnx
from hamer.hamer_module import HAMER
from hamer.runtime import OnnxRuntime

BOXES = {"Right": [100, 100, 250, 300], "Left": [350, 120, 500, 320]}
ONNX_JOINT_TOL_M = 1e-5  # fp32 ONNX Runtime vs torch, metres (measured ~1e-8 here, ~1e-7 on ViT-H)
INT8_JOINT_TOL_M = 2e-4  # 8-bit weights vs fp32 on the small random model (measured 0.02 mm)
BF16_JOINT_TOL_M = 3e-4  # bf16 autocast vs fp32 on the small random model (measured 0.03 mm)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (480, 640, 3)).astype(np.uint8)


def _joints(hamer: HAMER, image: np.ndarray, boxes: dict = BOXES) -> np.ndarray:
    hamer.process(image, boxes)
    return hamer.result["keypoints_3d"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir: Path, image: np.ndarray) -> tuple[Path, HAMER]:
    """The small model exported by ``HAMER(export_onnx=...)`` on its first call, and that HAMER."""
    path = tmp_path_factory.mktemp("onnx") / "hamer.onnx"
    torch_hamer = HAMER(data_dir=data_dir, task_paths={}, export_onnx=path)
    torch_hamer.process(image, BOXES)
    return path, torch_hamer


def test_export_on_first_call_then_carries_on(exported, image: np.ndarray) -> None:
    path, torch_hamer = exported
    assert path.is_file() and onnx.load(str(path), load_external_data=False).graph.input[0].name == "crops"
    assert torch_hamer.result["keypoints_3d"].shape == (2, 21, 3)
    mtime = path.stat().st_mtime_ns
    keypoints, _ = torch_hamer.process(image, {"Left": BOXES["Left"]})  # later calls run, no re-export
    assert keypoints["Left"].shape == (21, 3) and path.stat().st_mtime_ns == mtime


def test_onnx_backend_equals_torch(exported, image: np.ndarray) -> None:
    path, torch_hamer = exported
    onnx_hamer = HAMER(backend="onnx", onnx_path=path, task_paths={})  # no data_dir: the file suffices
    for boxes in (BOXES, {"Right": BOXES["Right"]}):  # batch 2 and 1 through the dynamic batch axis
        expected = _joints(torch_hamer, image, boxes)
        np.testing.assert_allclose(_joints(onnx_hamer, image, boxes), expected, atol=ONNX_JOINT_TOL_M, rtol=0)
        np.testing.assert_allclose(onnx_hamer.result["keypoints_2d"], torch_hamer.result["keypoints_2d"], atol=1e-3)
    assert onnx_hamer.cfg.MODEL.BACKBONE.EMBED_DIM == torch_hamer.cfg.MODEL.BACKBONE.EMBED_DIM


def test_export_traced_on_one_crop_runs_any_batch(tmp_path: Path, data_dir: Path) -> None:
    model, cfg = build_model(data_paths(data_dir))
    crops = np.random.default_rng(1).normal(size=(3, 3, 256, 256)).astype(np.float32)
    assert export_onnx(model, cfg, tmp_path / "one.onnx", crops[:1]) <= hamer.export.EXPORT_TOLERANCE
    with torch.inference_mode():
        expected = model(torch.from_numpy(crops))["pred_keypoints_3d"].numpy()
    got = OnnxRuntime(tmp_path / "one.onnx", torch.device("cpu"))(crops)["pred_keypoints_3d"]
    np.testing.assert_allclose(got, expected, atol=ONNX_JOINT_TOL_M, rtol=0)


def test_weights_go_to_one_external_file(exported) -> None:
    path, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["hamer.onnx", "hamer.onnx.data"]
    assert path.with_name("hamer.onnx.data").stat().st_size > 5 * path.stat().st_size


def test_export_mismatch_raises(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(hamer.export, "EXPORT_TOLERANCE", -1.0)
    model, cfg = build_model(data_paths(data_dir))
    with pytest.raises(RuntimeError, match="differs from torch"):
        export_onnx(model, cfg, tmp_path / "m.onnx", np.zeros((1, 3, 256, 256), dtype=np.float32))


def test_int8_weights_within_tolerance(exported, tmp_path: Path, image: np.ndarray) -> None:
    path, torch_hamer = exported
    int8 = quantize_onnx(path, tmp_path / "int8.onnx")
    nodes = onnx.load(str(int8), load_external_data=False).graph.node
    assert any(n.op_type == "MatMulInteger" for n in nodes)
    assert not any(n.op_type == "MatMulInteger" and n.name.startswith("/net/mano/") for n in nodes)
    error = np.linalg.norm(_joints(HAMER(backend="onnx", onnx_path=int8, task_paths={}), image)
                           - _joints(torch_hamer, image), axis=-1)
    assert error.max() < INT8_JOINT_TOL_M


def test_bf16_within_tolerance(exported, data_dir: Path, image: np.ndarray) -> None:
    _, torch_hamer = exported
    error = np.linalg.norm(_joints(HAMER(data_dir=data_dir, task_paths={}, precision="bf16"), image)
                           - _joints(torch_hamer, image), axis=-1)
    assert error.max() < BF16_JOINT_TOL_M


def test_bad_onnx_paths(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        HAMER(backend="onnx", onnx_path=missing, task_paths={}).load()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an ONNX model")
    with pytest.raises(ValueError, match="garbage.onnx"):
        HAMER(backend="onnx", onnx_path=garbage, task_paths={}).load()
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(ValueError, match="not exported by hamer.export"):
        HAMER(backend="onnx", onnx_path=foreign, task_paths={}).load()
    with pytest.raises(ValueError, match="onnx_path"):
        HAMER(backend="onnx", task_paths={})
    with pytest.raises(ValueError, match="backend"):
        HAMER(backend="tensorrt", task_paths={})
