"""Speed, memory and joint error of HaMeR's inference paths on this machine, in one run.

Paths: torch fp32, torch bf16 (autocast), onnxruntime fp32 (the default CPU path runs this file's equivalent from
its cache), onnxruntime int8 (``hamer.quantize.quantize_onnx``, calibrated on the photographs' hands).
Each runs ``HAMER.process`` (crop, network, MANO, camera) in a fresh subprocess: load time (``HAMER()`` +
``load()``), peak RSS after loading and after the runs (VmHWM), per-hand latency and throughput at batch 1 (one
hand) and batch 2 (both hands of the frame), after ``--warmup`` calls per batch size, median of ``--runs``. A path
whose first call takes over ``--budget`` s per hand (bf16 on a CPU without bf16 kernels) reports that cold call
alone. Joint error: 3D joints against torch fp32 on the same crops, in mm.

Also measured: the matmul peak (fp32, bf16) and the network's FLOPs per hand from its shapes (torch's FLOP
counter on one forward, attention through the math kernel so that it is counted), giving each path's GFLOP/s and
its fraction of the peak (int8 paths: fp32-equivalent FLOPs against the fp32 peak).

Weights are random, in the official layout (``tests/synthetic.py``; full ViT-H unless ``--small``), written once
under ``--work`` with the ONNX files; nothing is downloaded. Writes ``bench.json`` and ``bench.md`` to ``--out``.

Run: ``python benchmarks/bench.py`` (2 cores: ~9 minutes the first time, which writes the model files; ~5 after).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's hamer, and the synthetic assets

PATHS = ("torch-fp32", "default-cpu", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int8-1mm", "onnx-int8-1mm-nearest",
         "reference")
BOXES = {"Right": [100.0, 100.0, 250.0, 300.0], "Left": [350.0, 120.0, 500.0, 320.0]}  # batch 2; Right alone: 1
ONNX_FILES = {"onnx-fp32": "hamer.onnx", "onnx-int8": "hamer-int8.onnx", "onnx-int8-1mm": "hamer-int8-1mm.onnx",
              "onnx-int8-1mm-nearest": "hamer-int8-1mm-nearest.onnx"}
# int8 files: every ViT block 8-bit (no error bound), the quantizer's default (1 mm max, 0.3 mm mean: it keeps the
# first ViT blocks fp32, as few as those bounds allow), and the same with round-to-nearest weights (no GPTQ)
INT8_BOUNDS = {"onnx-int8": {"max_error_mm": float("inf"), "max_mean_error_mm": float("inf")}, "onnx-int8-1mm": {},
               "onnx-int8-1mm-nearest": {"rounding": "nearest"}}


def bench_image() -> np.ndarray:
    """The benchmark's frame: (480, 640, 3) uint8 noise, fixed seed (random weights make content irrelevant)."""
    return np.random.default_rng(0).uniform(0, 255, (480, 640, 3)).astype(np.uint8)


def memory_gb(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory, GB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 / 1e9 for line in f if line.startswith(key + ":"))


# ---------------------------------------------------------------------------------------------------- machine


def machine() -> dict:
    """CPU model, cores, threads and the instruction-set extensions that matter for fp32/bf16/int8 speed."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    lscpu = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(lscpu.get("Flags", "").split())
    import onnxruntime

    return {
        "cpu": lscpu.get("Model name", platform.processor()).strip(),
        "cpu_family_model": f"{lscpu.get('CPU family', '?').strip()}/{lscpu.get('Model', '?').strip()}",
        "cores": int(lscpu.get("Core(s) per socket", "0")) * int(lscpu.get("Socket(s)", "1")),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma")),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of an (n, n) x (n, n) ``F.linear``, the kernel of the network's layers (for bf16 on CPUs without
    bf16 instructions ``torch.matmul`` takes a 20x slower path), best of the runs in ~``seconds``."""
    a, w = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.nn.functional.linear(a, w)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def onnx_matmul_peak(int8: bool, n: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s (multiply-add = 2) of ONNX Runtime's matmul of an (n, n) float input by a constant (n, n) weight:
    fp32, or (``int8``) the QDQ MatMul that ``hamer.quantize`` writes, the input quantized to uint8 times a
    per-channel int8 weight (fused by ONNX Runtime into its int8 kernel). Best of the runs in ~``seconds``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w_q"),
                 numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
                 numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
                 numpy_helper.from_array(np.array(128, np.uint8), "x_zero")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
                 helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
                 helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
                 helper.make_node("MatMul", ["x_dq", "w"], ["y"])]
    else:
        inits = [numpy_helper.from_array(rng.normal(size=(n, n)).astype(np.float32), "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "int8_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = {"x": rng.normal(size=(n, n)).astype(np.float32)}
    session.run(None, x)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, x)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def matmul_peaks() -> dict[str, float]:
    """GFLOP/s of each precision's fastest matmul here: fp32 the better of torch and ONNX Runtime (``fp32_torch``,
    ``fp32_onnx``: they differ by up to 2x on one CPU), bf16 torch, int8 ONNX Runtime."""
    fp32 = {"fp32_torch": matmul_peak(torch.float32), "fp32_onnx": onnx_matmul_peak(int8=False)}
    return {"fp32": max(fp32.values()), **fp32, "bf16": matmul_peak(torch.bfloat16),
            "int8": onnx_matmul_peak(int8=True)}


def network_flops(model: torch.nn.Module) -> float:
    """FLOPs of one hand through the network (multiply-add = 2), counted by torch on a batch of one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 256, 256))
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------- assets


def prepare(work: Path, small: bool, paths: list[str]) -> dict:
    """Data folder, ONNX fp32 and int8 files under ``work`` (once; an int8 file of ``INT8_BOUNDS`` among ``paths``
    not made yet is made on this run), FLOPs and weight bytes (``prep.json``)."""
    info_file = work / "prep.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info["small"] != small:
            raise SystemExit(f"{work} holds the {'small' if info['small'] else 'full'} model: use another --work")
    else:
        info = export_models(work, small)
    quantize_models(work, info, paths)
    info_file.write_text(json.dumps(info, indent=1))
    return info


def export_models(work: Path, small: bool) -> dict:
    """The random-weight data folder, its fp32 ONNX export and the default path's cache under ``work``; FLOPs."""
    import hamer.configs
    from hamer.configs import data_paths, merge_config
    from hamer.export import export_onnx
    from hamer.onnx_cache import default_runtime
    from hamer.pipeline import make_inputs

    from synthetic import make_data_dir, training_config

    work.mkdir(parents=True, exist_ok=True)
    print(f"writing random-weight {'small' if small else 'ViT-H'} model files to {work} ...", flush=True)
    model = make_data_dir(work / "_DATA", small=small)
    cfg = merge_config(training_config(small))
    labels = list(BOXES)
    crops, _ = make_inputs(bench_image(), np.array([BOXES[k] for k in labels]),
                           np.array([k == "Right" for k in labels]), cfg, 2.0)
    info = {
        "flops_per_hand": network_flops(model),
        "torch_weight_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "small": small,
    }
    start = time.perf_counter()
    export_onnx(model, cfg, work / ONNX_FILES["onnx-fp32"], crops)
    info["export_s"] = time.perf_counter() - start
    hamer.configs.ONNX_CACHE_DIR = work / "onnx_cache"  # the default CPU path's export, as a user's first load
    start = time.perf_counter()
    default_runtime(lambda built=model: built, cfg, data_paths(work / "_DATA").checkpoint, "cpu", "fp32")
    info["default_cache_s"] = time.perf_counter() - start
    del model
    gc.collect()
    info["quantize"] = {}
    return info


def quantize_models(work: Path, info: dict, paths: list[str]) -> None:
    """The int8 files of ``INT8_BOUNDS`` among ``paths`` not yet in ``info``, calibrated and measured on the
    photographs' hands."""
    from hamer.onnx_runtime import OnnxRuntime
    from hamer.quantize import QuantizationError, calibration_sets, image_files, quantize_onnx

    missing = [name for name in INT8_BOUNDS if name in paths and name not in info["quantize"]]
    if not missing:
        return
    cfg = OnnxRuntime(work / ONNX_FILES["onnx-fp32"]).cfg
    fit, held_out = calibration_sets(image_files(ROOT.parent / "shared" / "images"), cfg)
    for name in missing:
        bounds = INT8_BOUNDS[name]
        start = time.perf_counter()
        try:
            report = quantize_onnx(work / ONNX_FILES["onnx-fp32"], work / ONNX_FILES[name], fit, held_out,
                                   **bounds)
        except QuantizationError as exc:
            report = exc.report
        info["quantize"][name] = {
            "s": time.perf_counter() - start, "max_mm": report.max_mm, "mean_mm": report.mean_mm,
            "fit_crops": report.fit_crops, "measured_crops": report.measured_crops, "rounding": report.rounding,
            "fp32_blocks": report.fp32_blocks, "fp32_layers": list(report.fp32_layers),
            "fp32_share": report.fp32_share, "blocks": report.blocks,
            "written": (work / ONNX_FILES[name]).is_file(), "shift_max_mm": report.shift_max_mm,
            "shift_mean_mm": report.shift_mean_mm,
            "candidates": [[t.fp32_blocks, list(t.fp32_layers), t.max_mm, t.mean_mm] for t in report.trials]}
    for name, file in ONNX_FILES.items():
        info[f"{name}_weight_bytes"] = sum(p.stat().st_size for p in work.glob(file + "*"))  # 0: not written


# ---------------------------------------------------------------------------------------------------- reference


def _import_reference(repo: Path) -> tuple:
    """The original's ``vit`` and ``mano_head`` modules from a checkout of geopavlakos/hamer, imported as
    ``hamer_ref.*`` without running its package ``__init__`` files (they import Lightning, renderers...)."""
    import importlib
    import types

    root = repo / "hamer"
    if not (root / "models/backbones/vit.py").is_file():
        raise SystemExit(f"--reference {repo}: not a checkout of geopavlakos/hamer (no hamer/models/backbones/vit.py)")
    for package in ("", ".models", ".models.backbones", ".models.heads", ".models.components", ".utils"):
        module = types.ModuleType("hamer_ref" + package)
        module.__path__ = [str(root / package[1:].replace(".", "/"))]
        sys.modules["hamer_ref" + package] = module
    return (importlib.import_module("hamer_ref.models.backbones.vit"),
            importlib.import_module("hamer_ref.models.heads.mano_head"))


class ReferenceNetwork:
    """The original code's network (its ``vit`` and ``MANOTransformerDecoderHead``, the same weights assigned, not
    copied) on this package's crops, then this package's MANO layer and crop camera (the original's MANO wrapper
    needs chumpy to read the pickle; MANO is ~1% of the time): a ``pipeline.Network``, so that the crops and the
    placement around it are ``HAMER``'s."""

    def __init__(self, repo: Path, data_dir: Path) -> None:
        from yacs.config import CfgNode

        from hamer.checkpoint import build_model
        from hamer.configs import data_paths

        vit, mano_head = _import_reference(repo)
        paths = data_paths(data_dir)
        self.model, self.cfg = build_model(paths)
        if int(self.cfg.MODEL.BACKBONE.EMBED_DIM) != 1280:
            raise SystemExit("--reference: the original code builds ViT-H only; drop --small")
        ref_cfg = CfgNode(json.loads(json.dumps(self.cfg)), new_allowed=True)
        ref_cfg.MANO.MEAN_PARAMS = str(paths.mean_params)
        self.backbone, self.head = vit.vit(ref_cfg), mano_head.MANOTransformerDecoderHead(ref_cfg)
        for module in (self.backbone, self.head):
            module.eval()  # the original ViT's train() returns None, so no chaining
        state = self.model.state_dict()
        for prefix, module in (("backbone.", self.backbone), ("mano_head.", self.head)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                   assign=True)

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(inputs)
            params, cam, _ = self.head(self.backbone(x[:, :, :, 32:-32]))
            net = self.model._mano_and_camera({k: v.float() for k, v in params.items()}, cam.float())
        return {k: v.numpy() for k, v in net.items()}


class ReferenceHamer:
    """``process``/``result`` as ``HAMER``'s, with :class:`ReferenceNetwork` in the frame pipeline."""

    def __init__(self, repo: Path, data_dir: Path) -> None:
        from hamer.pipeline import Reconstructor

        network = ReferenceNetwork(repo, data_dir)
        self.reconstructor = Reconstructor(network, network.cfg)
        self.result: dict = {}

    def process(self, image: np.ndarray, boxes: dict) -> None:
        from hamer.pipeline import predict_frame

        self.result = predict_frame(image, self.reconstructor, boxes=boxes).as_dict()


# ---------------------------------------------------------------------------------------------------- worker


def worker(path: str, work: Path, warmup: int, runs: int, batches: list[int], budget: float,
           reference: Path | None) -> dict:
    """One path in this (fresh) process: load, warm up, time; the joints of the last run by hand label."""
    import hamer.configs
    from hamer.hamer_module import HAMER

    hamer.configs.ONNX_CACHE_DIR = work / "onnx_cache"  # the default CPU path's cache, filled by prepare()
    image, labels = bench_image(), list(BOXES)
    rss_imports = memory_gb("VmRSS")
    start = time.perf_counter()
    if path == "reference":
        hamer = ReferenceHamer(reference, work / "_DATA")
    elif path in ONNX_FILES:
        hamer = HAMER(backend="onnx", onnx_path=work / ONNX_FILES[path], task_paths={})
    elif path == "default-cpu":
        hamer = HAMER(data_dir=work / "_DATA", task_paths={})
    else:
        hamer = HAMER(data_dir=work / "_DATA", task_paths={}, precision=path.split("-")[1], backend="torch")
    if path != "reference":
        hamer.load()
    out = {"load_s": time.perf_counter() - start, "rss_imports_gb": rss_imports, "rss_load_gb": memory_gb(),
           "latency": {}}
    for batch in batches:
        boxes = {k: BOXES[k] for k in labels[:batch]}
        for _ in range(warmup):
            start = time.perf_counter()
            hamer.process(image, boxes)
            seconds = time.perf_counter() - start
            if "first_call_s" not in out:
                out["first_call_s"], out["rss_first_call_gb"] = seconds, memory_gb()
            if seconds / batch > budget:  # too slow to time: report this cold call alone
                out["latency"][str(batch)] = {"s_per_hand": seconds / batch, "runs": [seconds], "cold": True}
                break
        else:
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                hamer.process(image, boxes)
                times.append(time.perf_counter() - start)
            out["latency"][str(batch)] = {"s_per_hand": float(np.median(times)) / batch, "runs": times, "cold": False}
        out["joints"] = {k: hamer.result["keypoints_3d"][i].tolist() for i, k in enumerate(hamer.result["hands"])}
        if out["latency"][str(batch)]["cold"]:
            break
    out["rss_peak_gb"] = memory_gb()
    return out


def run_worker(path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--work", str(args.work), "--warmup", str(args.warmup),
           "--runs", str(args.runs), "--budget", str(args.budget), "--batches", *map(str, args.batches)]
    if args.reference is not None:
        cmd += ["--reference", str(args.reference)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- report


def joint_error_mm(joints: dict, reference: dict) -> dict:
    """Max and mean 3D joint distance (mm) over the hands both have."""
    d = np.concatenate([np.linalg.norm(np.subtract(joints[k], reference[k]), axis=-1)
                        for k in joints if k in reference])
    return {"max_mm": float(d.max()) * 1000, "mean_mm": float(d.mean()) * 1000}


def summarize(results: dict, info: dict, peaks: dict) -> None:
    """Add weight bytes, GFLOP/s, fraction of peak and joint error to each path's result (in place)."""
    reference = results["torch-fp32"]["joints"] if "torch-fp32" in results else None
    for path, r in results.items():
        weights = info[f"{path}_weight_bytes"] if path in ONNX_FILES else info["torch_weight_bytes"]
        r["weight_gb"] = weights / 1e9
        r["rss_first_call_x_weights"] = r["rss_first_call_gb"] * 1e9 / weights
        r["rss_above_imports_x_weights"] = (r["rss_first_call_gb"] - r["rss_imports_gb"]) * 1e9 / weights
        for lat in r["latency"].values():
            lat["hands_per_s"] = 1.0 / lat["s_per_hand"]
            lat["gflops"] = info["flops_per_hand"] / lat["s_per_hand"] / 1e9
            for kind in ("fp32", "bf16", "int8"):
                lat[f"fraction_of_{kind}_peak"] = lat["gflops"] / peaks[kind]
        if reference is not None and path != "torch-fp32":
            r["joint_error"] = joint_error_mm(r["joints"], reference)


TABLE_HEADER = (
    "| path | weights GB | load s (1st call s) | RSS after imports GB | peak RSS load + 1st call GB (x weights; "
    "above imports) | s/hand b=1 | s/hand b=2 | hands/s b=2 | GFLOP/s | % fp32 peak | % int8 peak | "
    "joints vs torch fp32, max / mean mm |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _cell(latency: dict, batch: str, key: str) -> str:
    if batch not in latency:
        return "-"
    return f"{latency[batch][key]:.2f}" + (" (1 cold call)" if latency[batch]["cold"] else "")


def _row(path: str, r: dict) -> str:
    lat = r["latency"]
    best = lat["2"] if "2" in lat else lat["1"]
    err = r.get("joint_error")
    return (f"| {path} | {r['weight_gb']:.2f} | {r['load_s']:.1f} ({r['first_call_s']:.1f}) | "
            f"{r['rss_imports_gb']:.2f} | {r['rss_first_call_gb']:.2f} ({r['rss_first_call_x_weights']:.2f}x; "
            f"{r['rss_above_imports_x_weights']:.2f}x) | {_cell(lat, '1', 's_per_hand')} | "
            f"{_cell(lat, '2', 's_per_hand')} | {_cell(lat, '2', 'hands_per_s')} | {best['gflops']:.0f} | "
            f"{100 * best['fraction_of_fp32_peak']:.0f}% | {100 * best['fraction_of_int8_peak']:.0f}% | "
            + (f"{err['max_mm']:.3f} / {err['mean_mm']:.3f}" if err else "reference") + " |")


def markdown(report: dict) -> str:
    m, info, peaks, settings = report["machine"], report["prep"], report["peaks"], report["settings"]
    model = "small test model" if info["small"] else "ViT-H"
    shift = next(iter(info["quantize"].values()), None)  # the fp32 joints' 1-pixel shift: the same for every file
    lines = [
        (f"Machine: {m['cpu']} (family/model {m['cpu_family_model']}), {m['cores']} cores ({m['logical_cpus']} "
         f"logical CPUs), ISA: {' '.join(m['isa'])}; torch {m['torch']} ({m['torch_threads']} threads), "
         f"onnxruntime {m['onnxruntime']}."),
        (f"Matmul peaks (2048x2048, best of start and end): fp32 {peaks['fp32']:.0f} GFLOP/s (torch F.linear "
         f"{peaks['fp32_torch']:.0f}, ONNX Runtime MatMul {peaks['fp32_onnx']:.0f}), bf16 "
         f"{peaks['bf16']:.0f} GFLOP/s (torch F.linear), int8 {peaks['int8']:.0f} GFLOP/s (ONNX Runtime QDQ MatMul, "
         f"uint8 x int8 per channel). Network: {info['flops_per_hand'] / 1e9:.1f} GFLOP per hand ({model}, "
         f"random weights). Export {info['export_s']:.0f} s; the default path's first load (export into its "
         f"cache, checks) "
         f"{info['default_cache_s']:.0f} s. "
         + " ".join(f"{name}: quantized in {q['s']:.0f} s, first {q['fp32_blocks']} of {q['blocks']} ViT blocks "
                    f"and block layers {', '.join(q['fp32_layers']) or 'none'} fp32 "
                    f"({100 * q['fp32_share']:.0f}% of the ViT's multiply-adds), "
                    f"{q['rounding']} rounding, its own measure on {q['measured_crops']} held-out crops of the "
                    f"photographs' hands (calibrated on {q['fit_crops']} others) max "
                    f"{q['max_mm']:.3f} / mean {q['mean_mm']:.3f} mm{'' if q['written'] else ' (refused)'}."
                    for name, q in info["quantize"].items())
         + (f" For scale, a 1-pixel shift of those crops moves the fp32 joints by max {shift['shift_max_mm']:.3f} / "
            f"mean {shift['shift_mean_mm']:.3f} mm." if shift else "")),
        (f"Warm-up {settings['warmup']} call per batch size, median of {settings['runs']} runs per round, "
         f"{settings['rounds']} round(s) of all paths in alternating order, median over rounds. Load average "
         f"(1 min) before / after: {report['loadavg'][0]:.2f} / {report['loadavg'][1]:.2f}; the machine is shared, "
         f"so compare paths by their ratios. 'reference' is the original code's network (geopavlakos/hamer) on the "
         f"same crops; 'default-cpu' is `HAMER(device='cpu')`."),
        "",
        TABLE_HEADER,
        *(_row(path, r) for path, r in report["results"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="model files, kept (default /tmp/hamer_bench[_small])")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--batches", nargs="+", type=int, choices=(1, 2), default=[1, 2])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all paths, alternating their order")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="README whose table between the bench markers is regenerated ('' for none)")
    parser.add_argument("--budget", type=float, default=60.0, help="s/hand of a first call above which not to time")
    parser.add_argument("--small", action="store_true", help="the small test model (a quick check of this script)")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="a checkout of geopavlakos/hamer: also time the original code (path 'reference')")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work or Path("/tmp/hamer_bench" + ("_small" if args.small else ""))
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.warmup, args.runs, args.batches, args.budget,
                                args.reference)))
        return
    if args.reference is None and "reference" in args.paths:
        args.paths.remove("reference")
        print("no --reference DIR: the original code is not timed", flush=True)
    report = {"machine": machine(),
              "settings": {k: v for k, v in vars(args).items() if k in ("warmup", "runs", "rounds")}}
    report["peaks"] = matmul_peaks()
    print(f"{report['machine']}\nmatmul peak GFLOP/s: {report['peaks']}", flush=True)
    report["prep"] = prepare(args.work, args.small, args.paths)
    for name, q in report["prep"]["quantize"].items():
        if not q["written"] and name in args.paths:
            args.paths.remove(name)
            print(f"{name}: refused by the quantizer (no candidate within its bounds): not timed", flush=True)
    report["results"], loadavg = {}, os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {path: [] for path in args.paths}
    for number in range(args.rounds):
        for path in args.paths if number % 2 == 0 else args.paths[::-1]:
            print(f"round {number + 1}: timing {path} ...", flush=True)
            rounds[path].append(run_worker(path, args))
    report["results"] = {path: merge_rounds(runs) for path, runs in rounds.items()}
    report["loadavg"] = [loadavg, os.getloadavg()[0]]
    end = matmul_peaks()
    report["peaks"] = {k: max(v, end[k]) for k, v in report["peaks"].items()}  # best of start and end
    summarize(report["results"], report["prep"], report["peaks"])
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    (args.out / "bench.md").write_text(table)
    if str(args.readme) not in ("", ".") and not args.small:
        update_readme(args.readme, table)
    print(table)


def merge_rounds(runs: list[dict]) -> dict:
    """One path's rounds: the first round's load and memory figures, each batch's median s/hand over rounds."""
    merged = dict(runs[0])
    merged["latency"] = {}
    for batch, first in runs[0]["latency"].items():
        per_round = [r["latency"][batch]["s_per_hand"] for r in runs if batch in r["latency"]]
        merged["latency"][batch] = {**first, "s_per_hand": float(np.median(per_round)), "rounds": per_round}
    merged["rss_peak_gb"] = max(r["rss_peak_gb"] for r in runs)
    return merged


README_BEGIN, README_END = "<!-- bench.py table: begin -->", "<!-- bench.py table: end -->"


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the README's bench markers with ``table``."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        print(f"{readme}: no bench markers; README not updated", flush=True)
        return
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + README_BEGIN + "\n" + table + rest[rest.index(README_END):])


if __name__ == "__main__":
    main()
