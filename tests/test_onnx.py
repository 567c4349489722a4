"""ONNX export, the ONNX Runtime backend, 8-bit weights and bf16, on the small synthetic model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import hamer.checkpoint
import hamer.export
from hamer.checkpoint import build_model
from hamer.cli import main
from hamer.configs import data_paths
from hamer.export import export_onnx
from hamer.hamer_module import HAMER
from hamer.onnx_cache import cache_dir
from hamer.onnx_runtime import OnnxRuntime, intra_op_threads
from hamer.quantize import QuantizationError, calibration_sets, image_files, quantize_onnx
from hamer.torch_runtime import TorchRuntime

from conftest import SHARED_IMAGES

BOXES = {"Right": [100, 100, 250, 300], "Left": [350, 120, 500, 320]}
ONNX_JOINT_TOL_M = 1e-5  # fp32 ONNX Runtime vs torch, metres (measured ~1e-8 here, ~1e-7 on ViT-H)
DEFAULT_PATH_TOL_M = 1e-6  # the default CPU path (cached ONNX) vs torch fp32: 1e-3 mm (measured 1.5e-8 m)
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
    torch_hamer = HAMER(data_dir=data_dir, task_paths={}, export_onnx=path, backend="torch")
    torch_hamer.process(image, BOXES)
    return path, torch_hamer


def test_onnx_runtime_threads_follow_omp_num_threads_without_torch() -> None:
    """Without torch loaded: OMP_NUM_THREADS when a positive integer, else ONNX Runtime's default (0: a thread per
    physical core). With torch loaded: torch's thread count (a user's torch.set_num_threads holds)."""
    code = ("import os, sys; from hamer.onnx_runtime import intra_op_threads\n"
            "for omp in ('3', '', 'x', '0', None):\n"
            "    os.environ.pop('OMP_NUM_THREADS', None) if omp is None else os.environ.update(OMP_NUM_THREADS=omp)\n"
            "    print(intra_op_threads())\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", "0", "0", "0", "0", "False"]
    assert intra_op_threads() == torch.get_num_threads()  # this process has torch


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
    got = OnnxRuntime(tmp_path / "one.onnx")(crops)["pred_keypoints_3d"]
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


@pytest.fixture(scope="module")
def calibration(exported) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out crops of the hands MediaPipe finds in 4 photographs (skipped without them)."""
    if not SHARED_IMAGES.is_dir():
        pytest.skip("the photographs (../shared/images) are not here")
    _, torch_hamer = exported
    return calibration_sets(image_files(SHARED_IMAGES)[:4], torch_hamer.cfg)


def test_default_cpu_path_is_cached_onnx_with_torch_outputs(exported, data_dir: Path, image: np.ndarray) -> None:
    _, torch_hamer = exported
    assert isinstance(torch_hamer.reconstructor.network.runtime, TorchRuntime)
    first = HAMER(data_dir=data_dir, task_paths={})
    first.load()
    network = first.reconstructor.network
    assert isinstance(network, OnnxRuntime) and network.path.parent.parent == cache_dir()
    entry = network.path.parent
    mtime = (entry / "hamer.onnx.data").stat().st_mtime_ns
    again = HAMER(data_dir=data_dir, task_paths={})
    for boxes in (BOXES, {"Left": BOXES["Left"]}):
        np.testing.assert_allclose(_joints(again, image, boxes), _joints(torch_hamer, image, boxes),
                                   atol=DEFAULT_PATH_TOL_M, rtol=0)
    assert again.reconstructor.network.path == network.path and (entry / "hamer.onnx.data").stat().st_mtime_ns == mtime
    bf16 = HAMER(data_dir=data_dir, task_paths={}, precision="bf16")
    bf16.load()
    assert isinstance(bf16.reconstructor.network, TorchRuntime)  # the default path is ONNX only for fp32


def test_a_cache_hit_builds_no_torch_model(exported, data_dir: Path, image: np.ndarray, monkeypatch) -> None:
    _, torch_hamer = exported
    HAMER(data_dir=data_dir, task_paths={}).load()  # the export is cached (here or by an earlier test)

    def no_model(*args, **kwargs):
        raise AssertionError("the torch model was built although the cache holds the export")

    monkeypatch.setattr(hamer.checkpoint, "build_model", no_model)
    hit = HAMER(data_dir=data_dir, task_paths={})
    np.testing.assert_allclose(_joints(hit, image), _joints(torch_hamer, image), atol=DEFAULT_PATH_TOL_M, rtol=0)
    assert isinstance(hit.reconstructor.network, OnnxRuntime)
    with pytest.raises(AssertionError, match="torch model was built"):  # torch itself still needs it
        HAMER(data_dir=data_dir, task_paths={}, backend="torch").load()


def test_corrupt_cache_is_rebuilt(data_dir: Path, image: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hamer.configs, "ONNX_CACHE_DIR", tmp_path)
    reference = _joints(HAMER(data_dir=data_dir, task_paths={}, backend="torch"), image)
    hamer_ = HAMER(data_dir=data_dir, task_paths={})
    hamer_.load()
    data = hamer_.reconstructor.network.path.with_name("hamer.onnx.data")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = bytes(4096)  # zero a stretch of weights: loads, gives other outputs
    data.write_bytes(bytes(raw))
    np.testing.assert_allclose(_joints(HAMER(data_dir=data_dir, task_paths={}), image), reference,
                               atol=DEFAULT_PATH_TOL_M, rtol=0)
    assert data.read_bytes() != bytes(raw)  # rewritten


def test_int8_static_quantization_reports_its_error(exported, calibration: np.ndarray, tmp_path: Path,
                                                    image: np.ndarray) -> None:
    path, torch_hamer = exported
    crops, held_out = calibration
    report = quantize_onnx(path, tmp_path / "int8.onnx", crops, held_out)
    nodes = onnx.load(str(report.path), load_external_data=False).graph.node
    assert any(n.op_type == "QuantizeLinear" for n in nodes)
    assert (report.fit_crops, report.measured_crops, report.rounding) == (len(crops), len(held_out), "gptq")
    assert not any(n.op_type == "DequantizeLinear" and n.name.startswith("/net/mano/") for n in nodes)
    # the products of two activations (attention) stay fp32: no input of theirs comes through a DequantizeLinear
    producers = {o: n for n in nodes for o in n.output}
    constants = {t.name for t in onnx.load(str(report.path), load_external_data=False).graph.initializer}
    products = [n for n in nodes if n.op_type == "MatMul" and n.input[1] not in constants
                and not (n.input[1] in producers and producers[n.input[1]].input[0] in constants)]
    attention = {f"/net/backbone/blocks.{b}/attn/MatMul{suffix}" for b in (0, 1) for suffix in ("", "_1")}
    assert {n.name for n in products} >= attention
    assert not [n.name for n in products if any(i in producers and producers[i].op_type == "DequantizeLinear"
                                                for i in n.input)]
    # within the default bounds at once: every ViT layer 8-bit, one candidate measured
    assert (report.fp32_blocks, report.fp32_layers, report.fp32_share) == (0, (), 0)
    assert (report.blocks, report.quantized_matmuls) == (2, 8)
    assert [(t.fp32_blocks, t.fp32_layers) for t in report.trials] == [(0, ())]
    assert report.shift_max_mm > report.shift_mean_mm > 0  # the fp32 joints' response to a 1-pixel crop shift
    int8 = HAMER(backend="onnx", onnx_path=report.path, task_paths={})
    error = np.linalg.norm(_joints(int8, image) - _joints(torch_hamer, image), axis=-1)
    assert 0 < report.max_mm < 1.0 and 0 < error.max() < 1e-3  # the small model: measured ~0.05 mm
    with pytest.raises(QuantizationError, match="no 8-bit candidate is within 1e-09 mm") as refused:
        quantize_onnx(path, tmp_path / "refused.onnx", crops, held_out, max_error_mm=1e-9)
    # every count of leading fp32 blocks that leaves a quantized layer was tried; then each block layer alone
    # 8-bit; then the layers kept fp32 one more at a time, by error per multiply-add, each with both counts
    trials = refused.value.report.trials
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert [(t.fp32_blocks, t.fp32_layers) for t in trials[:6]] == \
        [(0, ()), (1, ())] + [(0, tuple(other for other in layers if other != layer)) for layer in layers]
    macs = _layer_macs(path)
    assert [t.fp32_share for t in trials[2:6]] == pytest.approx([1 - macs[layer] / sum(macs.values())
                                                                  for layer in layers])
    order = sorted(layers, key=lambda layer: -trials[2 + layers.index(layer)].mean_mm ** 2 / macs[layer])
    assert [(t.fp32_blocks, t.fp32_layers) for t in trials[6:]] == \
        [(blocks, tuple(order[:count])) for count in (1, 2, 3) for blocks in (0, 1)]
    assert refused.value.report.max_mm == min(t.max_mm for t in trials) > 1e-9
    assert not list(tmp_path.glob("refused*"))
    with pytest.raises(ValueError, match="fp32_blocks must be 0..1"):
        quantize_onnx(path, tmp_path / "bad.onnx", crops, held_out, fp32_blocks=2)
    with pytest.raises(ValueError, match="unknown ViT block layer.s. attn.out: the blocks have attn.qkv, attn.proj"):
        quantize_onnx(path, tmp_path / "bad.onnx", crops, held_out, fp32_layers=["attn.out"])
    with pytest.raises(ValueError, match="would leave no ViT layer 8-bit"):
        quantize_onnx(path, tmp_path / "bad.onnx", crops, held_out, fp32_layers=layers)
    with pytest.raises(ValueError, match="rounding must be one of gptq, nearest, got 'up'"):
        quantize_onnx(path, tmp_path / "bad.onnx", crops, held_out, rounding="up")
    with pytest.raises(ValueError, match=r"held-out crops must be \(N, 3, H, W\) with N >= 1"):
        quantize_onnx(path, tmp_path / "bad.onnx", crops, held_out[:0])


def _matmul_inputs(graph, node_name: str) -> list[str]:
    return next(list(n.input) for n in graph.graph.node if n.name == node_name)


def _layer_macs(path: Path) -> dict[str, int]:
    """Multiply-adds per token (K x N of the weight) of each layer of ViT block 0 of the exported model."""
    graph = onnx.load(str(path), load_external_data=False)
    dims = {t.name: t.dims for t in graph.graph.initializer}
    weights = {layer: _matmul_inputs(graph, f"/net/backbone/blocks.0/{layer}/MatMul")[1]
               for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")}
    return {layer.replace("/", "."): int(np.prod(dims[weight])) for layer, weight in weights.items()}


def _layer_inputs(model: torch.nn.Module, modules: dict[str, torch.nn.Linear], crops: np.ndarray) -> dict:
    """The rows (M, K) float64 each Linear of ``modules`` takes over ``crops`` (one crop at a time), by torch hooks."""
    inputs: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda _m, args, _out, k=k: inputs.setdefault(k, []).append(args[0]))
             for k, m in modules.items()]
    with torch.inference_mode():
        for crop in crops:
            model(torch.from_numpy(crop[None]))
    for hook in hooks:
        hook.remove()
    return {k: torch.cat(v).reshape(-1, modules[k].in_features).double().numpy() for k, v in inputs.items()}


def test_first_blocks_kept_fp32_and_biases_corrected_for_weight_rounding(exported, calibration: np.ndarray,
                                                                          tmp_path: Path) -> None:
    """With one leading block fp32, block 0's MatMuls read fp32 weights and block 1's 8-bit ones; each 8-bit
    MatMul's bias is the fp32 bias minus mean(x) @ (W_q - W), mean(x) measured here with torch hooks."""
    from onnx import numpy_helper

    path, torch_hamer = exported
    crops, held_out = calibration
    report = quantize_onnx(path, tmp_path / "int8.onnx", crops, held_out, max_error_mm=10, fp32_blocks=1)
    assert (report.fp32_blocks, report.quantized_matmuls) == (1, 4)
    quantized, fp32 = onnx.load(str(report.path)), onnx.load(str(path))
    producers = {o: n for n in quantized.graph.node for o in n.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    fp32_initializers = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2"):
        weight = _matmul_inputs(quantized, f"/net/backbone/blocks.0/{layer}/MatMul")[1]
        assert weight in initializers and initializers[weight].dtype == np.float32  # fp32, untouched
        assert producers[_matmul_inputs(quantized, f"/net/backbone/blocks.1/{layer}/MatMul")[1]].op_type == \
            "DequantizeLinear"

    model = torch_hamer.reconstructor.network.runtime.model
    modules = {"attn/qkv": model.backbone.blocks[1].attn.qkv, "mlp/fc2": model.backbone.blocks[1].mlp.fc2}
    inputs = _layer_inputs(model, modules, crops)
    for layer in modules:
        x = inputs[layer].mean(0)
        weight_name = _matmul_inputs(fp32, f"/net/backbone/blocks.1/{layer}/MatMul")[1]
        dequantize = producers[_matmul_inputs(quantized, f"/net/backbone/blocks.1/{layer}/MatMul")[1]]
        q, scale, zero = (initializers[i].astype(np.float64) for i in dequantize.input)
        rounding = (q - zero) * scale - fp32_initializers[weight_name]
        add = next(n for n in fp32.graph.node if n.name == f"/net/backbone/blocks.1/{layer}/Add")
        bias = next(i for i in add.input if i in fp32_initializers)
        expected = fp32_initializers[bias] - x @ rounding
        assert np.abs(rounding).max() > 0 and np.abs(x @ rounding).max() > 1e-6  # a correction that shows
        np.testing.assert_allclose(initializers[bias], expected, rtol=0, atol=1e-6)


def _weight_grid(model, node_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, scale, zero point) of the DequantizeLinear feeding a MatMul's weight."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dequantize = producers[_matmul_inputs(model, node_name)[1]]
    return tuple(numpy_helper.to_array(initializers[i]) for i in dequantize.input)


def test_gptq_rounding_keeps_onnxruntimes_grid_and_cuts_the_layer_output_error(exported, calibration,
                                                                                tmp_path: Path) -> None:
    """The same layer quantized both ways: round-to-nearest gives round(W / scale); GPTQ keeps those scales and the
    int8 range and gives other integers, whose output error on the calibration activations (taken here with torch
    hooks) is smaller."""
    from onnx import numpy_helper

    path, torch_hamer = exported
    crops, held_out = calibration
    files = {rounding: quantize_onnx(path, tmp_path / f"{rounding}.onnx", crops, held_out, max_error_mm=10,
                                     fp32_blocks=0, rounding=rounding).path for rounding in ("nearest", "gptq")}
    models = {rounding: onnx.load(str(file)) for rounding, file in files.items()}
    fp32 = onnx.load(str(path))
    model = torch_hamer.reconstructor.network.runtime.model
    inputs = _layer_inputs(model, {"attn/qkv": model.backbone.blocks[1].attn.qkv,
                                   "mlp/fc2": model.backbone.blocks[0].mlp.fc2}, crops)
    for layer, block in (("attn/qkv", 1), ("mlp/fc2", 0)):
        node = f"/net/backbone/blocks.{block}/{layer}/MatMul"
        weight = numpy_helper.to_array(next(t for t in fp32.graph.initializer
                                            if t.name == _matmul_inputs(fp32, node)[1])).astype(np.float64)
        (q_near, scale, zero), (q_gptq, scale_gptq, zero_gptq) = (_weight_grid(models[r], node)
                                                                   for r in ("nearest", "gptq"))
        np.testing.assert_array_equal(scale, scale_gptq)
        np.testing.assert_array_equal(zero, zero_gptq)
        assert q_gptq.dtype == np.int8 and np.abs(q_gptq.astype(int)).max() <= 127 and not np.any(zero)
        np.testing.assert_array_equal(q_near, np.clip(np.rint(weight / scale), -127, 127))
        assert np.mean(q_gptq != q_near) > 0.05
        x = inputs[layer]
        errors = {r: np.linalg.norm(x @ (q.astype(np.float64) * scale - weight))
                  for r, q in (("nearest", q_near), ("gptq", q_gptq))}
        assert errors["gptq"] < 0.8 * errors["nearest"], errors


def test_leading_fp32_blocks_search_finds_the_fewest_that_pass() -> None:
    """The search over measured candidates: all blocks 8-bit first, then halving the interval."""
    from hamer.quantize.search import fewest

    for threshold in (0, 1, 5, 16, 31):
        tried: list[int] = []
        found = fewest(range(32), lambda b, t=threshold, seen=tried: seen.append(b) or b >= t)
        assert found == threshold and tried[0] == 0 and len(tried) <= 6
    tried = []
    assert fewest(range(32), lambda b: tried.append(b) or False) is None
    assert tried == [0, 16, 24, 28, 30, 31]
    assert fewest(range(1), lambda b: False) is None and fewest([], lambda b: True) is None
    assert fewest([3], lambda b: True) == 3


def test_cheapest_candidate_over_fp32_layer_families() -> None:
    """Each family of fp32 block layers gets the fewest leading fp32 blocks among those cheaper than the best
    found; the search stops once nothing cheaper is left, without drawing (measuring) the next family."""
    from hamer.quantize.search import cheapest

    weight = {(): 0.0, ("a",): 0.1, ("a", "b"): 0.3, ("a", "b", "c"): 0.9}
    first = {(): 5, ("a",): 2, ("a", "b"): 0, ("a", "b", "c"): 0}  # the fewest blocks at which each passes

    def search(first: dict, weight: dict = weight) -> tuple:
        tried, drawn = [], []

        def share(blocks: int, layers: tuple) -> float:
            return blocks / 8 + (1 - blocks / 8) * weight[layers]

        def families():
            for layers in weight:
                drawn.append(layers)
                yield layers

        best = cheapest(range(8), families(), share,
                        lambda blocks, layers: tried.append((blocks, layers)) or blocks >= first[layers])
        return best, tried, drawn

    best, tried, drawn = search(first)
    # (): 5 blocks (share 0.625); ("a",): 2 (0.325); ("a", "b") at 0 blocks (0.3) is cheaper still and passes
    assert best == (0, ("a", "b")) and drawn == list(weight)[:3]
    assert tried[0] == (0, ()) and (5, ()) in tried and (2, ("a",)) in tried and tried[-1] == (0, ("a", "b"))
    # ("a",) only tries counts cheaper than 5 blocks of (): share(k, a) < 0.625 for k <= 4
    assert max(b for b, layers in tried if layers == ("a",)) <= 4
    best, tried, drawn = search({**first, ("a", "b"): 3})
    # ("a", "b") at 0 blocks (0.3) is the only count cheaper than ("a",) at 2 (0.325): it fails, ("a", "b", "c")
    # has nothing cheaper: stop
    assert best == (2, ("a",)) and [t for t in tried if t[1] == ("a", "b")] == [(0, ("a", "b"))]
    assert drawn == list(weight)
    best, tried, drawn = search({(): 0})
    assert best == (0, ()) and tried == [(0, ())] and drawn == [()]  # the cheapest candidate: nothing drawn after it
    # a candidate only as cheap as the best (0.25 + 0.75 * 0.125 = 0.34375, exact in binary) is not tried
    best, tried, drawn = search(first, {**weight, ("a",): 0.125, ("a", "b"): 0.34375})
    assert best == (2, ("a",)) and not [t for t in tried if t[1] == ("a", "b")]
    assert cheapest(range(2), iter([(), ("a",)]), lambda b, layers: b, lambda b, layers: False) is None


def test_fp32_layers_kept_in_every_block(exported, calibration, tmp_path: Path) -> None:
    """Given block layers stay fp32 in every block (their weights fp32 initializers), the others read int8 weights;
    one candidate at a fixed block count."""
    path, _ = exported
    crops, held_out = calibration
    report = quantize_onnx(path, tmp_path / "int8.onnx", crops, held_out, max_error_mm=10, fp32_blocks=0,
                           fp32_layers=["attn.proj"])
    assert (report.fp32_blocks, report.fp32_layers, report.quantized_matmuls) == (0, ("attn.proj",), 6)
    macs = _layer_macs(path)
    assert report.fp32_share == pytest.approx(macs["attn.proj"] / sum(macs.values()))
    assert [(t.fp32_blocks, t.fp32_layers) for t in report.trials] == [(0, ("attn.proj",))]
    quantized = onnx.load(str(report.path), load_external_data=False)
    producers = {o: n for n in quantized.graph.node for o in n.output}
    constants = {t.name for t in quantized.graph.initializer}
    for block in (0, 1):
        for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2"):
            weight = _matmul_inputs(quantized, f"/net/backbone/blocks.{block}/{layer}/MatMul")[1]
            if layer == "attn/proj":
                assert weight in constants, block
            else:
                assert weight not in constants and producers[weight].op_type == "DequantizeLinear", (block, layer)


def test_quantize_command(exported, calibration, tmp_path: Path, capsys) -> None:
    path, _ = exported
    images = tmp_path / "images"
    images.mkdir()
    for src in image_files(SHARED_IMAGES)[:3]:
        (images / src.name).symlink_to(src)
    out = tmp_path / "q.onnx"
    # (one family of candidates: the refusal is what is checked here; the search's order, on quantize_onnx)
    assert main(["quantize", str(path), str(out), "--images", str(images), "--max-error-mm", "1e-6",
                 "--fp32-layers", "mlp.fc1"]) == 1
    assert "no 8-bit candidate is within 1e-06 mm" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(path), str(out), "--images", str(images), "--rounding", "nearest",
                 "--fp32-layers", "attn.proj", "mlp.fc2"]) == 0
    macs = _layer_macs(path)
    share = 100 * (macs["attn.proj"] + macs["mlp.fc2"]) / sum(macs.values())
    assert f"nearest rounding, the first 0 of 2 ViT blocks and block layers attn.proj, mlp.fc2 fp32 ({share:.0f}% " \
        "of the ViT's multiply-adds), 4 MatMuls 8-bit" in capsys.readouterr().out
    assert main(["quantize", str(path), str(out), "--images", str(images), "--fp32-layers", "mlp.fc3"]) == 1
    assert "error: unknown ViT block layer(s) mlp.fc3: the blocks have attn.qkv, attn.proj, mlp.fc1, mlp.fc2" in \
        capsys.readouterr().err
    assert main(["quantize", str(path), str(out), "--images", str(images)]) == 0
    printed = capsys.readouterr().out
    assert "gptq rounding, the first 0 of 2 ViT blocks and block layers none fp32" in printed and out.is_file()
    # test1 and test3 calibrate (each hand and 7 jittered copies), test2's two hands measure
    fit = re.search(r"on 2 held-out hand crop\(s\) from \S+ \(calibrated on (\d+) other crops\)", printed)
    assert fit and int(fit.group(1)) > 0 and int(fit.group(1)) % 8 == 0, printed
    assert main(["run", str(images), "--backend", "onnx", "--onnx", str(out), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    assert (tmp_path / "r" / "images.jsonl").read_text().count('"keypoints_3d"') > 0
    assert main(["quantize", str(path), str(out), "--images", str(tmp_path / "none")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.jpg").symlink_to(image_files(SHARED_IMAGES)[0])
    assert main(["quantize", str(path), str(out), "--images", str(single)]) == 1
    assert "need at least 2 images (half calibrate, half measure the error), got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["quantize", str(path), str(out), "--images", str(images), "--fp32-blocks", "-1"])
    assert usage.value.code == 2 and "--fp32-blocks: must be 0 or more" in capsys.readouterr().err
    assert main(["quantize", str(path), str(out), "--images", str(images), "--fp32-blocks", "5"]) == 1
    assert "fp32_blocks must be 0..1 (the ViT has 2 blocks)" in capsys.readouterr().err
    # the fp32 choices are checked before the images are read (no folder here) or the model loaded
    assert main(["quantize", str(path), str(out), "--images", str(tmp_path / "none"), "--fp32-layers", "mlp.fc3"]) == 1
    assert "error: unknown ViT block layer(s) mlp.fc3" in capsys.readouterr().err


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
