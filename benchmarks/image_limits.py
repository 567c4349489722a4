"""Time and peak memory of reading hostile image files, before decoding (``hamer.images.read_image``) and as OpenCV
alone decodes them (what ``read_image`` did before the header check), and of an image at the default pixel limit.

Each case runs in a fresh process: its wall time and its peak resident memory (VmHWM), against the same process
after its imports only. The files are built under ``--work`` (default /tmp/hamer_image_limits; not in the
repository): a 1-bit 32000 x 32000 PNG of zeros (124 kB), a 69-byte PNG whose header says 60000 x 60000, a sparse
4 GB file starting like a JPEG, and a 1-bit PNG of 14142 x 14142 (200 million pixels, the default limit).

Run: ``python benchmarks/image_limits.py`` (about a minute; the OpenCV-only bomb case needs 3 GB of memory).
Results: ``results/image_limits.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_images import lying_png, png_bomb  # noqa: E402 (the test's builders: one way to make the files)

PROBE = """
import json, sys, time
import cv2, numpy as np
from hamer.cli import main
from hamer.images import ImageError, read_image

def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 / 1e6 for line in f if line.startswith("VmHWM:"))  # kB: KiB

how, path, out = sys.argv[1:4]
imports_mb = peak_mb()
start = time.perf_counter()
result = "decoded"
if how == "read_image":
    try:
        read_image(path)
    except ImageError as exc:
        result = "refused: " + str(exc).split(": ", 1)[1]
elif how == "opencv":
    try:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        result = "decoded" if img is not None else "None"
    except cv2.error as exc:
        result = "cv2.error: " + str(exc).strip().splitlines()[-1]
elif how == "hamer run":
    result = f"exit status {main(['run', path, '--bbox-only', '--quiet', '--overwrite', '--out', out])}"
print(json.dumps({"seconds": time.perf_counter() - start, "imports_mb": imports_mb, "peak_mb": peak_mb(),
                  "result": result}))
"""


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hamer_image_limits"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = {"bomb.png": lambda: png_bomb(32000, 32000), "liar.png": lambda: lying_png(60000, 60000),
             "at_limit.png": lambda: png_bomb(14142, 14142)}
    for name, make in files.items():
        if not (args.work / name).exists():
            (args.work / name).write_bytes(make())
    with open(args.work / "huge.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(4 * 10**9)
    cases = [("read_image", "bomb.png"), ("opencv", "bomb.png"), ("read_image", "liar.png"), ("opencv", "liar.png"),
             ("read_image", "huge.jpg"), ("opencv", "huge.jpg"), ("read_image", "at_limit.png"),
             ("hamer run", "at_limit.png")]
    rows = []
    for how, name in cases:
        path = args.work / name
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", PROBE, how, str(path), str(args.work / "out")],
                             capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            row = {"exit_status": run.returncode, "result": run.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(run.stdout.strip().splitlines()[-1])
        row.update(how=how, file=name, file_bytes=path.stat().st_size, process_s=time.perf_counter() - start)
        rows.append(row)
        print(row, flush=True)
    result = {"cpu": cpu_name(), "python": platform.python_version(), "cases": rows}
    results = ROOT / "benchmarks" / "results"
    (results / "image_limits.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Reading hostile image files ({result['cpu']}, Python {result['python']})", "",
             "`python benchmarks/image_limits.py`; each case a fresh process. *opencv*: `np.fromfile` + "
             "`cv2.imdecode`, what `read_image` did before its checks.", "",
             "| file | bytes | how | seconds | peak RSS MB, 10^6 bytes (after imports) | result |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_mb']:.0f} ({r['imports_mb']:.0f})" if "peak_mb" in r else "-"
        seconds = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        lines.append(f"| {r['file']} | {r['file_bytes']} | {r['how']} | {seconds} | {peak} | {r['result']} |")
    (results / "image_limits.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
