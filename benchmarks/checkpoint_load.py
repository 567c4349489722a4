"""Load time and peak memory of the full-size HaMeR: Lightning .ckpt vs ``hamer convert`` safetensors (fp32, fp16).

Builds the synthetic full-size data folder (ViT-H backbone, random weights, ~2.5 GB checkpoint) once under
``--work`` (default /tmp/hamer_full; not in the repository), converts it with ``hamer convert`` (with and without
``--half``), then loads each in fresh processes (page cache warm: each is run ``--repeat`` times, the fastest kept):
the time of ``build_model``, the time until every weight has been read once (a checksum: memory-mapped weights are
only read from disk when first used), the peak resident memory (VmHWM) and the private memory (RssAnon) after.
``--cold`` drops the page cache before each load instead (Linux, needs root).

Run: ``python benchmarks/checkpoint_load.py`` (several minutes the first time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
import torch
from hamer import configs
from hamer.checkpoint import build_model

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

imports_mb = status("VmRSS")
start = time.perf_counter()
model, cfg = build_model(configs.data_paths(sys.argv[1], sys.argv[2]))
built = time.perf_counter() - start
with torch.no_grad():
    checksum = sum(float(t.sum()) for t in model.state_dict().values() if t.is_floating_point())
touched = time.perf_counter() - start
print(json.dumps({"build_s": built, "ready_s": touched, "imports_mb": imports_mb, "peak_mb": status("VmHWM"),
                  "anon_mb": status("RssAnon"), "checksum": checksum}))
"""


def build(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import ensure_data_dir

    data = ensure_data_dir(work / "_DATA", small=False)
    for name, extra in (("hamer.safetensors", []), ("hamer_fp16.safetensors", ["--half"])):
        if not (work / name).is_file():
            subprocess.run([sys.executable, "-m", "hamer", "convert", str(data / "hamer_ckpts/checkpoints/hamer.ckpt"),
                            str(work / name), "--data", str(data), *extra], check=True)


def probe(data: Path, checkpoint: Path, repeat: int, cold: bool) -> dict:
    """The fastest of ``repeat`` fresh-process loads, with the highest peak memory seen; ``cold``: page cache
    dropped before each (Linux, root)."""
    runs = []
    for _ in range(repeat):
        if cold:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        runs.append(json.loads(subprocess.run([sys.executable, "-c", PROBE, str(data), str(checkpoint)], check=True,
                                              capture_output=True, text=True).stdout))
    best = min(runs, key=lambda r: r["ready_s"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hamer_full"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each load (root)")
    args = parser.parse_args()
    build(args.work)
    data = args.work / "_DATA"
    empty = args.work / "empty"  # no config, MANO or mean-parameter files: the safetensors file must suffice
    empty.mkdir(exist_ok=True)
    cases = [("Lightning .ckpt (+ yaml, MANO pkl, npz)", data, data / "hamer_ckpts/checkpoints/hamer.ckpt"),
             ("safetensors fp32 (alone)", empty, args.work / "hamer.safetensors"),
             ("safetensors fp16 (alone)", empty, args.work / "hamer_fp16.safetensors")]
    print("| checkpoint | size | build_model s | + all weights read s | peak RSS MB | private (anon) RSS MB "
          "after | checksum |")
    print("|---|---|---|---|---|---|---|")
    for title, folder, ckpt in cases:
        r = probe(folder, ckpt, args.repeat, args.cold)
        print(f"| {title} | {ckpt.stat().st_size / 2**30:.2f} GB | {r['build_s']:.2f} | {r['ready_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {r['anon_mb']:.0f} | {r['checksum']:.6g} |", flush=True)
    print(f"(RSS of the process after its imports, before loading: {r['imports_mb']:.0f} MB)")

if __name__ == "__main__":
    main()
