"""Start-up cost of short runs, as a user starts them: ``hamer run`` on one photograph (local engine) and
``hamer run --engine ray`` on a 10-frame clip (a local Ray started and shut down), small synthetic model, warm ONNX
cache.

Each run is a fresh process; its wall time, and the machine's busy CPU time meanwhile (``/proc/stat``: every
process it starts, Ray's included; run it on an otherwise idle machine). ``--code`` runs another checkout of
hamer (e.g. an older commit, ``git worktree add``) for a before/after table; rows of other labels already in the
results are kept. Runs alternate between the codes given in one call (A B A B ...) so that drift hits both.

Run: ``python benchmarks/startup.py --code OLD_CHECKOUT --label before --code . --label now [--runs 5]``
(about a minute per run pair). Results: benchmarks/results/startup.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from first_run import cpu_name  # (this folder: a script's own)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PHOTO = ROOT.parent / "shared" / "images" / "test4.jpg"


def busy_s() -> float:
    """The machine's busy CPU time so far (/proc/stat: all but idle and iowait), in seconds."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, the machine's CPU s) of ``cmd``, which must exit 0: every process it starts is counted (Ray's too,
    which the raylet starts and may not wait for), so nothing else should run meanwhile."""
    cpu, start = busy_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall, cpu = time.perf_counter() - start, busy_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", action="append", required=True, help="a checkout of hamer (repeatable)")
    parser.add_argument("--label", action="append", required=True, help="its label in the table (one per --code)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import make_data_dir
    from videos import pan_zoom, write_video

    work = Path(tempfile.mkdtemp(prefix="hamer-startup-"))
    try:
        data = work / "_DATA"
        make_data_dir(data)
        clip = write_video(work / "clip.mp4", pan_zoom(PHOTO.name, 10))
        cases = {"one photo": [str(PHOTO)], "10-frame clip, --engine ray": [str(clip), "--engine", "ray"]}
        codes = {label: Path(code).resolve() for code, label in zip(args.code, args.label, strict=True)}

        def run(label: str, inputs: list[str]) -> tuple[float, float]:
            env = {**os.environ, "PYTHONPATH": str(codes[label]), "HAMER_ONNX_CACHE": str(work / f"cache-{label}")}
            return timed([sys.executable, "-m", "hamer", "run", *inputs, "--data", str(data), "--out",
                          str(work / "out"), "--quiet", "--overwrite"], env, codes[label])

        for label in codes:  # a warm-up each: the ONNX cache filled, files in the page cache
            for inputs in cases.values():
                run(label, inputs)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.runs):
            for case, inputs in cases.items():
                for label in codes:
                    times.setdefault((case, label), []).append(run(label, inputs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [{"case": case, "code": label, "commit": commit(codes[label]), "runs": len(t),
             "wall_s_median": round(statistics.median(w for w, _ in t), 2),
             "cpu_s_median": round(statistics.median(c for _, c in t), 2)} for (case, label), t in times.items()]
    path = RESULTS / "startup.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in old if r["code"] not in codes] + rows
    cpu = cpu_name()
    path.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")
    lines = [f"# Start-up of short runs ({cpu}; medians of {args.runs} runs)", "",
             "| case | code | commit | wall s | CPU s |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['code']} | {r['commit']} | {r['wall_s_median']} | {r['cpu_s_median']} |"
              for r in sorted(rows, key=lambda r: (r["case"], r["code"]))]
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def commit(code: Path) -> str:
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
