"""Time and peak memory of reading a model config with a YAML alias bomb: PyYAML's safe_load as the config
loader used it before (then merged into the default config, and JSON-dumped as the ONNX cache key does) against
:func:`hamer.configs.load_config` (aliases refused).

Each case runs in a fresh process (peak resident memory: VmHWM; the imports' share is given apart), with a time
limit (``--limit``, default 120 s) after which the case is reported as not finished. The bombs are built here:
``LEVELS`` levels, each holding the previous one 9 times (9**LEVELS leaves after expansion), as a mapping or a list.

Run: ``python benchmarks/config_bombs.py`` (writes benchmarks/results/config_bombs.{md,json}).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
import yaml
from hamer import configs

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 / 1e6 for line in f if line.startswith(key + ":"))

path, how = sys.argv[1], sys.argv[2]
imports_mb = status("VmHWM")
start = time.perf_counter()
try:
    if how == "safe_load + merge":
        raw = yaml.safe_load(open(path, encoding="utf-8"))
        json.dumps(configs.merge_config(raw, path))
    elif how == "safe_load + json.dumps":
        json.dumps(yaml.safe_load(open(path, encoding="utf-8")))
    else:
        configs.load_config(path)
    outcome = "accepted"
except ValueError as exc:
    outcome = "refused: " + str(exc).split(": ", 1)[1][:60]
print(json.dumps({"s": time.perf_counter() - start, "imports_mb": imports_mb, "peak_mb": status("VmHWM"),
                  "outcome": outcome}))
"""


def bomb(levels: int, mapping: bool) -> str:
    lines = ["l0: &l0 {x: 1, y: 2}" if mapping else "l0: &l0 [1, 2]"]
    for i in range(1, levels + 1):
        refs = [f"k{j}: *l{i - 1}" if mapping else f"*l{i - 1}" for j in range(9)]
        lines.append(f"l{i}: &l{i} " + ("{" + ", ".join(refs) + "}" if mapping else "[" + ", ".join(refs) + "]"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=120.0)
    args = parser.parse_args()
    cases = [(6, True, "safe_load + merge"), (7, True, "safe_load + merge"), (7, True, "load_config"),
             (6, False, "safe_load + json.dumps"), (7, False, "safe_load + json.dumps"), (7, False, "load_config"),
             (9, True, "load_config")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for levels, mapping, how in cases:
            path = Path(tmp) / f"bomb{levels}{'m' if mapping else 'l'}.yaml"
            path.write_text(bomb(levels, mapping))
            row = {"bomb": f"{'mapping' if mapping else 'list'}, {levels} levels", "bytes": path.stat().st_size,
                   "leaves": 2 * 9**levels, "reader": how}
            try:
                done = subprocess.run([sys.executable, "-c", PROBE, str(path), how], capture_output=True, text=True,
                                      timeout=args.limit, check=True, cwd=ROOT)
                row.update(json.loads(done.stdout))
            except subprocess.TimeoutExpired:
                row.update({"s": None, "outcome": f"not finished in {args.limit:g} s"})
            print(row, flush=True)
            rows.append(row)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    out = ROOT / "benchmarks" / "results" / "config_bombs"
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "python": platform.python_version(),
                                                    "rows": rows}, indent=2) + "\n")
    lines = [f"# YAML alias bombs in model_config.yaml\n\nCPU: {cpu}; Python {platform.python_version()}; "
             "each case in a fresh process; peak = VmHWM (MB = 10^6 bytes), imports included.\n",
             "| bomb | file bytes | leaves expanded | reader | time s | peak MB | outcome |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        time_s = "-" if r.get("s") is None else f"{r['s']:.3f}"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        lines.append(f"| {r['bomb']} | {r['bytes']:,} | {r['leaves']:,} | {r['reader']} | {time_s} | {peak} | "
                     f"{r['outcome']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
