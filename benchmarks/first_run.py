"""First run (empty ONNX cache: the one-time export) vs warm run of the default CPU path, full-size model.

Builds the synthetic full-size data folder (ViT-H backbone, random weights, official layout, 2.68 GB checkpoint)
under ``--work`` once (default /tmp/hamer_full; not in the repository), then in fresh processes (``nice``) loads
``HAMER(data_dir=...)`` with the default backend and runs one crop: first with an empty ONNX cache, then again
with the cache it filled. Each process reports its wall time, its peak resident memory (VmHWM: the whole process,
weights mapped from the checkpoint included; it starts no children), the peak at each of its log records (the
export's phases) and a digest of its outputs. ``--code`` runs another checkout of hamer (e.g. the main branch) for
a before/after table; rows of other labels already in the results are kept.

Run: ``python benchmarks/first_run.py [--code /work/main --label main]`` (minutes: the export is the first run).
Results: benchmarks/results/first_run.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PROBE = """
import hashlib, json, logging, sys, time
import numpy as np, onnxruntime, torch

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

marks = []
class Mark(logging.Handler):
    def emit(self, record):
        marks.append({"s": round(time.perf_counter() - start, 1), "peak_mb": round(status("VmHWM")),
                      "rss_mb": round(status("VmRSS")), "message": record.getMessage()[:90]})

import hamer.configs
hamer.configs.ONNX_CACHE_DIR = sys.argv[2]
from hamer import HAMER
logging.getLogger("hamer").addHandler(Mark())
logging.getLogger("hamer").setLevel(logging.INFO)
imports_mb = status("VmRSS")
start = time.perf_counter()
hamer_ = HAMER(data_dir=sys.argv[1], task_paths={})
hamer_.load()
loaded = time.perf_counter() - start
out = hamer_.reconstructor.network(np.random.default_rng(1).normal(size=(1, 3, 256, 256)).astype(np.float32))
digest = hashlib.sha256(b"".join(out[k].tobytes() for k in sorted(out))).hexdigest()[:16]
print(json.dumps({"load_s": loaded, "total_s": time.perf_counter() - start, "imports_mb": imports_mb,
                  "peak_mb": status("VmHWM"), "end_rss_mb": status("VmRSS"), "outputs_sha256": digest,
                  "runtime": type(hamer_.reconstructor.network).__name__, "marks": marks}))
"""


def cpu_name() -> str:
    """lscpu's model name and this machine's core count."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores"


def build(work: Path) -> Path:
    """The full-size synthetic data folder under ``work`` (written once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import ensure_data_dir

    return ensure_data_dir(work / "_DATA", small=False)


def probe(code: Path, data: Path, cache: Path) -> dict:
    """One fresh process of ``code``'s hamer loading ``data`` with the ONNX cache ``cache``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(["nice", "-n", "10", sys.executable, "-c", PROBE, str(data), str(cache)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    """The results table, one row per label and run, then each first run's phases."""
    size = results["checkpoint_bytes"]
    lines = [f"# First run vs warm run of the default CPU path (full-size model, {size / 1e9:.2f} GB checkpoint)",
             "", f"CPU: {results['cpu']}. Command: `python benchmarks/first_run.py` (see its docstring).", "",
             "| code | run | runtime | load s | peak RSS MiB | peak / checkpoint | RSS after imports MiB | outputs |",
             "|---|---|---|---|---|---|---|---|"]
    for label, runs in results["runs"].items():
        for run, r in runs.items():
            lines.append(f"| {label} | {run} | {r['runtime']} | {r['load_s']:.0f} | {r['peak_mb']:.0f} | "
                         f"{r['peak_mb'] * 2**20 / size:.2f}x | {r['imports_mb']:.0f} | `{r['outputs_sha256']}` |")
    for label, runs in results["runs"].items():
        lines += ["", f"## {label}: first run, peak RSS at each log record", "", "| s | peak MiB | RSS MiB | record |",
                  "|---|---|---|---|"]
        lines += [f"| {m['s']} | {m['peak_mb']} | {m['rss_mb']} | {m['message'].replace('|', '/')} |"
                  for m in runs["first"]["marks"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hamer_full"))
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose hamer runs (default: this one)")
    parser.add_argument("--label", default="this branch")
    args = parser.parse_args()
    data = build(args.work)
    cache = args.work / f"onnx_cache_{args.label.replace(' ', '_')}"
    shutil.rmtree(cache, ignore_errors=True)
    runs = {}
    for run in ("first", "warm"):
        runs[run] = probe(args.code.resolve(), data, cache)
        print(run, {k: v for k, v in runs[run].items() if k != "marks"}, flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    path = RESULTS / "first_run.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results.update(cpu=cpu_name(), checkpoint_bytes=(data / "hamer_ckpts/checkpoints/hamer.ckpt").stat().st_size)
    results["runs"][args.label] = runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "first_run.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
