"""A corpus run from and into object storage against the same run on local paths: wall time and the S3 requests
per unit, by kind.

The store: moto's S3 server on 127.0.0.1 (no network latency: the requests counted, times the latency of a real
store, are what the network adds). The corpus: ``--images`` photographs of ``../shared/images`` and ``--videos``
clips of ``--frames`` frames (320x240) made from them. Each run is a ``hamer run --bbox-only --quiet`` process
(MediaPipe only: the bookkeeping and transfers are what is measured, not the network): local -> local, S3 -> S3,
then a second S3 run (everything skipped). Requests are counted from the server's request log. Each run is repeated
``--repeat`` times into a fresh output; the best wall time is kept (the machine is shared). Writes ``storage.json``
and ``storage.md`` to ``--out``.

Run: ``nice python benchmarks/storage.py`` (2 cores, shared: ~3 minutes).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from videos import IMAGES, pan_zoom, write_video  # noqa: E402

PHOTOS = ("test4.jpg", "test5.jpeg", "test6.jpg", "test1.jpg")


class Requests(logging.Handler):
    """Counts the S3 server's requests by method (from werkzeug's request log)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for method in ("GET", "PUT", "HEAD", "POST", "DELETE"):
            if f'"{method} ' in text or f"m{method} " in text:
                self.counts[method] += 1
                return


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hamer", "run", *args, "--bbox-only", "--quiet"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"hamer run failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    opts = parser.parse_args()

    import s3fs
    from moto.server import ThreadedMotoServer

    counter = Requests()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    work = Path(tempfile.mkdtemp(prefix="hamer-storage-bench-"))
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "XDG_CACHE_HOME": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION")})
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        for i in range(opts.images):
            (corpus / f"img{i:03d}.jpg").write_bytes((IMAGES / PHOTOS[i % len(PHOTOS)]).read_bytes())
        for i in range(opts.videos):
            write_video(corpus / f"clip{i}.mp4", pan_zoom(PHOTOS[i % len(PHOTOS)], opts.frames))
        units = opts.images + opts.videos
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        fs.put(str(corpus) + "/", "bench/in/", recursive=True)
        names = sorted(p.name for p in corpus.iterdir())
        local_in = [str(corpus / n) for n in names]
        s3_in = [f"s3://bench/in/{n}" for n in names]
        results: dict[str, dict] = {}
        for label, inputs, out in (("local -> local", local_in, lambda r: str(work / f"out{r}")),
                                   ("s3 -> s3", s3_in, lambda r: f"s3://bench/out{r}")):
            best, counts = None, None
            for r in range(opts.repeat):
                counter.counts.clear()
                seconds = timed([*inputs, "--out", out(r)], env)
                if best is None or seconds < best:
                    best, counts = seconds, dict(counter.counts)
            results[label] = {"wall_s": round(best, 2), "requests": counts,
                              "requests_per_unit": round(sum(counts.values()) / units, 2)}
        counter.counts.clear()
        seconds = timed([*s3_in, "--out", "s3://bench/out0"], env)
        results["s3 second run (all skipped)"] = {"wall_s": round(seconds, 2), "requests": dict(counter.counts),
                                                  "requests_per_unit": round(sum(counter.counts.values()) / units, 2)}
    finally:
        server.stop()
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "images": opts.images, "videos": opts.videos,
              "frames": opts.frames, "units": units, "runs": results,
              "s3_over_local": round(results["s3 -> s3"]["wall_s"] / results["local -> local"]["wall_s"], 3)}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "storage.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Object storage: a corpus run from and into S3 (moto on 127.0.0.1) vs local paths",
             "", f"CPU: {report['cpu']} ({report['cores']} cores, shared). {units} units: {opts.images} images, "
             f"{opts.videos} videos of {opts.frames} frames (320x240); `hamer run --bbox-only`, best of "
             f"{opts.repeat}.", "", "| run | wall (s) | S3 requests per unit | by kind |", "|---|---|---|---|"]
    for label, row in results.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["requests"].items()))
        lines.append(f"| {label} | {row['wall_s']} | {row['requests_per_unit']} | {kinds or '-'} |")
    lines += ["", f"S3 / local wall time: {report['s3_over_local']}x (no network latency: on a real store add "
              "the requests per unit times its latency, e.g. 20 ms each, per unit, spread over the detection "
              "threads and the writer)."]
    (opts.out / "storage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
