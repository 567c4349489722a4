"""Boxes from a file (``hamer.boxfile.BoxesFromFile``): the time to check and index a file, the memory its index
keeps, and the time per frame looked up, for files of 10^4 to 10^6 frames (two hands a frame), written at run time.

Memory is the growth of the process's peak resident set (``ru_maxrss``) over opening the file, each size in a fresh
process; the index should keep about 24 bytes a frame, whatever the file holds besides.

Run: ``nice python benchmarks/boxfile.py OUT_DIR`` (about a minute; writes OUT_DIR/boxfile.json and .md).
Results: ``results/boxfile.md``.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (10_000, 100_000, 1_000_000)
LOOKUPS = 10_000


def measure(frames: int) -> dict:
    """Runs in a child process: write, open (check and index), look up; peak RSS growth in MiB."""
    from hamer.boxfile import BoxesFromFile
    from hamer.detectors import FrameRef

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boxes.jsonl"
        with open(path, "w") as f:
            for i in range(frames):
                x = 10 + i % 100
                f.write(json.dumps({"frame": i, "hands": [
                    {"label": "Right", "box": [x, 20.5, x + 80, 120.25], "score": 0.91},
                    {"label": "Left", "box": [x + 150, 30, x + 220, 110], "score": 0.87}]}) + "\n")
        img = np.zeros((240, 480, 3), np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        boxes = BoxesFromFile(path)
        opened = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for index in rng.integers(0, frames, LOOKUPS):
            assert len(boxes.detect(img, None, FrameRef("v.mp4", int(index)))) == 2
        per_frame = (time.perf_counter() - start) / LOOKUPS
        boxes.close()
        return {"frames": frames, "file_mib": path.stat().st_size / 2**20, "open_s": opened,
                "index_rss_mib": (after - before) / 1024, "lookup_us": per_frame * 1e6}


def main() -> None:
    if sys.argv[1] == "--child":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True,
                                      text=True).stdout) for n in SIZES]
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    (out / "boxfile.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")
    lines = [f"# Boxes from a file: open and look up (CPU: {cpu})", "",
             "| frames | file MiB | open (check + index) s | index RSS MiB | bytes/frame | lookup µs/frame |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['file_mib']:.1f} | {r['open_s']:.2f} | {r['index_rss_mib']:.1f} | "
                     f"{r['index_rss_mib'] * 2**20 / r['frames']:.0f} | {r['lookup_us']:.1f} |")
    (out / "boxfile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
