"""A small video corpus through frame by frame (today's loop), the local engine, and Ray with 1 and 2 workers.

The corpus: ``--videos`` clips of ``--frames`` frames (640x480, 30 fps), each a photograph of ``../shared/images``
with hands, panned and zoomed. Each path runs in a fresh process (peak RSS is its own), twice: with the small
synthetic network, whose cost per frame stands in for a GPU's (decoding and detection are what the pipeline must
hide), and with the full-size one (ViT-H, random weights in the official layout; the network dominates on a CPU).

Reported per path: frames/s; per-stage cost per frame (decode, detect = MediaPipe + tracking, crop = crops and
placement, network, write = smoothing + files), summed over threads and workers; the share of the run's wall time
the network is busy (its seconds / wall of the run, model loading excluded; Ray: summed over workers); peak RSS of
each process that holds the network; Ray: the local cluster's start and a trivial ``map_batches`` (separately), the
workers' start (actor, imports, network loading: the run's wall before its first unit) and, with one worker, the
overhead per video: (wall from the first unit - the units' own seconds in the worker) / videos.
Also a paper estimate of GPU hours for a 1,000-hour corpus from the measured stage costs and the published GPU
per-crop time. Writes ``corpus.json`` and ``corpus.md`` to ``--out``.

Run: ``nice python benchmarks/corpus.py`` (2 cores, shared: ~10 minutes; the full-size model files are written
once under ``--work``, 2.7 GB). ``--small-only`` skips the full-size network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

PHOTOS = ("test4.jpg", "test5.jpeg", "test6.jpg", "test2.png")
PATHS = ("frame", "local", "ray-1", "ray-2")
GPU_MS_PER_CROP = 32.0  # HaMeR's published per-crop time on a GPU (hamer#1)
CORPUS_HOURS, FPS, HANDS_PER_FRAME = 1000, 30, 2


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def make_corpus(folder: Path, videos: int, frames: int) -> list[str]:
    import cv2
    from videos import pan_zoom, write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(videos):
        path = folder / f"clip{i}.mp4"
        if not path.exists():
            write_video(path, pan_zoom(PHOTOS[i % len(PHOTOS)], frames, size=(640, 480)), fps=FPS)
        assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == frames
        paths.append(str(path))
    return paths


def data_folder(work: Path, small: bool) -> Path:
    root = work / ("small" if small else "full") / "_DATA"
    if not (root / "hamer_ckpts/checkpoints/hamer.ckpt").is_file():
        from synthetic import make_data_dir

        print(f"writing the {'small' if small else 'full-size'} random-weight model to {root} ...", flush=True)
        make_data_dir(root, small=small)
    return root


# ---------------------------------------------------------------------------------------------------- children

def run_frame_by_frame(data: Path, inputs: list[str], out: Path, batch_size: int) -> dict:
    """Today's loop: per video, VideoHands frame after frame, the same writer as the engines."""
    from hamer.corpus import Decoded, Options, UnitWriter, assign_names, collect_units, read_frames
    from hamer.detection import HAND_TASK_PATH, POSE_TASK_PATH, DetectorOptions, HandDetector
    from hamer.engines.local import StageStats, TimedNetwork, load_reconstructor
    from hamer.outputs import Frame
    from hamer.pipeline import Reconstructor
    from hamer.tracking import HandTracker, OneEuroFilter, VideoHands

    del batch_size
    stats = StageStats()
    net = load_reconstructor(Options(data=str(data), backend="torch"))
    rec = Reconstructor(TimedNetwork(net.network, stats), net.cfg, net.rescale_factor)
    units, _ = collect_units(inputs)
    assign_names(units, {})
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for unit in units:
        with HandDetector(DetectorOptions(HAND_TASK_PATH, POSE_TASK_PATH, mode="VIDEO")) as det, \
                UnitWriter(unit, out, Options(), rec.faces) as writer:
            video = VideoHands(det, rec, HandTracker(), partial(OneEuroFilter, 1.0, 10.0))
            frames = read_frames(unit, Decoded())
            while True:
                t0 = time.perf_counter()
                got = next(frames, None)
                t1 = time.perf_counter()
                if got is None:
                    break
                index, time_s, source, img = got
                tracked = video.track(img, int(round(index * 1000 / unit.fps)))
                t2 = time.perf_counter()
                network_before = stats.seconds["network"]
                hands = rec(img, tracked.hands)
                t3 = time.perf_counter()
                writer.add(Frame(source, index, time_s, video.finish(tracked, hands)), img)
                t4 = time.perf_counter()
                stats.add("decode", t1 - t0)
                stats.add("detect", t2 - t1)
                stats.add("crop", t3 - t2 - (stats.seconds["network"] - network_before))
                stats.add("write", t4 - t3, frames=1)
    stats.wall = time.perf_counter() - start
    return {"stats": stats, "workers_rss": {}}


def run_engine(data: Path, inputs: list[str], out: Path, engine: str, workers: int, batch_size: int,
               detect_workers: int) -> dict:
    from hamer.corpus import Options, run_corpus
    from hamer.engines.local import StageStats

    stats = StageStats()
    extra: dict = {}
    if engine == "ray":
        import ray

        from hamer.engines.ray import init_local

        t0 = time.perf_counter()
        init_local(num_cpus=os.cpu_count())
        t1 = time.perf_counter()
        ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b, batch_size=2).materialize()
        extra = {"ray_init_s": t1 - t0, "trivial_map_batches_s": time.perf_counter() - t1}
    options = Options(data=str(data), backend="torch", smooth=True, engine=engine, workers=workers,
                      batch_size=batch_size, detect_workers=detect_workers)
    start = time.perf_counter()
    records = run_corpus(inputs, out, options, overwrite=True, stats=stats)
    extra["run_wall_s"] = time.perf_counter() - start  # model loading included
    assert all(r["status"] == "done" for r in records), records
    extra["unit_seconds_s"] = sum(r["seconds"] for r in records)
    return {"stats": stats, "workers_rss": dict(stats.peak_rss_mib), **extra}


def child(args: argparse.Namespace) -> None:
    inputs = json.loads(args.inputs)
    out = Path(args.work) / "out" / args.child
    start = time.perf_counter()
    if args.child == "frame":
        got = run_frame_by_frame(Path(args.data), inputs, out, args.batch_size)
    else:
        engine, workers = ("local", 1) if args.child == "local" else ("ray", int(args.child.split("-")[1]))
        got = run_engine(Path(args.data), inputs, out, engine, workers, args.batch_size, args.detect_workers)
    stats = got.pop("stats")
    got.setdefault("run_wall_s", time.perf_counter() - start)
    print("RESULT " + json.dumps({
        "frames": stats.frames, "wall_s": stats.wall, "seconds": dict(stats.seconds),
        "peak_rss_mib": peak_rss_mib(), **got}), flush=True)


# ---------------------------------------------------------------------------------------------------- parent

def measure(args: argparse.Namespace, small: bool, inputs: list[str]) -> dict:
    data = data_folder(Path(args.work), small)
    weights_mib = (data / "hamer_ckpts/checkpoints/hamer.ckpt").stat().st_size / 2**20
    rows = {}
    for path in PATHS:
        cmd = [sys.executable, __file__, "--child", path, "--data", str(data), "--inputs", json.dumps(inputs),
               "--work", args.work, "--batch-size", str(args.batch_size), "--detect-workers",
               str(args.detect_workers)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        print(f"{'small' if small else 'full'} {path} ...", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{path} failed:\n{done.stderr[-3000:]}")
        r = json.loads(line[7:])
        frames = r["frames"]
        workers = r["workers_rss"] or {"main": r["peak_rss_mib"]}
        rows[path] = {
            "frames": frames,
            "wall_s": round(r["wall_s"], 2),
            "run_wall_s": round(r["run_wall_s"], 2),
            "fps": round(frames / r["wall_s"], 2),
            "ms_per_frame": {s: round(1000 * r["seconds"].get(s, 0.0) / frames, 1)
                             for s in ("decode", "detect", "crop", "network", "write")},
            "network_busy": round(r["seconds"].get("network", 0.0) / r["wall_s"], 3),
            "peak_rss_mib_per_worker": {str(k): round(v) for k, v in workers.items()},
            "peak_rss_per_weights": round(max(workers.values()) / weights_mib, 2),
            **{k: round(r[k], 2) for k in ("ray_init_s", "trivial_map_batches_s") if k in r},
        }
        if path == "ray-1":  # one worker runs the units one after another: the rest of the wall is overhead
            rows[path]["overhead_per_video_s"] = round((r["wall_s"] - r["unit_seconds_s"]) / len(inputs), 2)
            rows[path]["worker_start_s"] = round(r["run_wall_s"] - r["wall_s"], 2)
    return {"weights_mib": round(weights_mib), "paths": rows}


def paper_estimate(small_run: dict) -> dict:
    """GPU hours of a 1,000-hour corpus from the published GPU per-crop time and this CPU's measured decode and
    detection costs (the small run's: they do not depend on the network)."""
    frames = CORPUS_HOURS * 3600 * FPS
    net_ms_per_frame = GPU_MS_PER_CROP * HANDS_PER_FRAME
    local = small_run["paths"]["local"]["ms_per_frame"]
    cpu_ms_per_frame = local["decode"] + local["detect"] + local["crop"] + local["write"]
    gpu_hours = frames * net_ms_per_frame / 1000 / 3600
    return {
        "frames": frames,
        "network_ms_per_frame_gpu": net_ms_per_frame,
        "cpu_ms_per_frame": round(cpu_ms_per_frame, 1),
        "detect_workers_per_gpu": max(1, int(-(-cpu_ms_per_frame // net_ms_per_frame))),
        "hours": {str(g): round(gpu_hours / g, 1) for g in (1, 8, 64)},
        "gpu_hours": round(gpu_hours),
    }


def markdown(result: dict) -> str:
    lines = ["# Corpus run: frame by frame, the local engine, Ray (benchmarks/corpus.py)", "",
             f"CPU: {result['cpu']} ({os.cpu_count()} cores), load average at the start {result['load_before']}, "
             f"at the end {result['load_after']} (shared machine: compare ratios within one run). "
             f"Clips 640x480, 30 fps. --batch-size {result['batch_size']}, --detect-workers "
             f"{result['detect_workers']}, smoothing on, torch backend, torch threads {result['threads']} "
             "(OMP_NUM_THREADS; Ray gives each 1-CPU worker 1).", ""]
    for size in ("small", "full"):
        if size not in result:
            continue
        run = result[size]
        frames = result["frames"] if size == "small" else result["full_frames"]
        lines += [f"## {size} network (weights {run['weights_mib']} MiB), {result['videos']} videos x {frames} frames",
                  "",
                  "| path | frames/s | decode | detect | crop | network | write (ms/frame) | network busy | "
                  "peak RSS per worker (MiB) | RSS / weights |", "|" + "---|" * 10]
        for path, row in run["paths"].items():
            ms = row["ms_per_frame"]
            lines.append(f"| {path} | {row['fps']} | {ms['decode']} | {ms['detect']} | {ms['crop']} | "
                         f"{ms['network']} | {ms['write']} | {row['network_busy']:.0%} | "
                         f"{', '.join(map(str, row['peak_rss_mib_per_worker'].values()))} | "
                         f"{row['peak_rss_per_weights']} |")
        p = run["paths"]
        lines += ["", f"local / frame by frame: {p['local']['fps'] / p['frame']['fps']:.2f}x; "
                      f"Ray 1 worker / local: {p['ray-1']['fps'] / p['local']['fps']:.2f}x; "
                      f"Ray 2 workers / local: {p['ray-2']['fps'] / p['local']['fps']:.2f}x (frames/s of the run, "
                      "model loading excluded). "
                      f"Ray start-up: ray.init {p['ray-1']['ray_init_s']} s + trivial map_batches "
                      f"{p['ray-1']['trivial_map_batches_s']} s, then the worker's start (network loading "
                      f"included) {p['ray-1']['worker_start_s']} s; overhead per video (Ray 1 worker, beyond the "
                      f"video's own time in the worker): {p['ray-1']['overhead_per_video_s']} s.", ""]
    if "estimate" in result:
        e = result["estimate"]
        lines += ["## Paper estimate: 1,000 hours of video", "",
                  f"{e['frames']:,} frames at {FPS} fps, {HANDS_PER_FRAME} hands a frame, {GPU_MS_PER_CROP} ms a crop "
                  f"on a GPU (published, batch 1): {e['network_ms_per_frame_gpu']} ms of network a frame, "
                  f"{e['gpu_hours']:,} GPU-hours: **{e['hours']['1']} h on 1 GPU, {e['hours']['8']} h on 8, "
                  f"{e['hours']['64']} h on 64** (the network bounds it, if each GPU is fed). Feeding it: decode + "
                  f"detect + crop + write measured here at {e['cpu_ms_per_frame']} ms a frame (one core), so "
                  f"{e['detect_workers_per_gpu']} detection worker(s) per GPU keep it busy at that per-crop time; "
                  "a batched GPU network (several times faster per crop) or 1080p decoding needs proportionally "
                  "more: workers per GPU = CPU ms per frame / GPU network ms per frame.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/hamer-corpus-bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--full-frames", type=int, default=6, help="frames per video with the full-size network")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--detect-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's threads in frame-by-frame and local runs (OMP_NUM_THREADS; Ray sets 1 a worker)")
    parser.add_argument("--small-only", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result = {"cpu": cpu, "videos": args.videos, "frames": args.frames, "batch_size": args.batch_size,
              "detect_workers": args.detect_workers, "threads": args.threads,
              "load_before": round(os.getloadavg()[0], 1)}
    work = Path(args.work)
    result["small"] = measure(args, True, make_corpus(work / f"clips-{args.frames}", args.videos, args.frames))
    result["estimate"] = paper_estimate(result["small"])
    if not args.small_only:
        result["full"] = measure(args, False, make_corpus(work / f"clips-{args.full_frames}", args.videos,
                                                                 args.full_frames))
        result["full_frames"] = args.full_frames
    result["load_after"] = round(os.getloadavg()[0], 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(result, indent=1))
    (out / "corpus.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
