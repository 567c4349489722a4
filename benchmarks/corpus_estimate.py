"""Time to finish a 1,000-hour corpus of videos of long-tailed lengths on N GPUs, with and without segments.

A deterministic simulation, not a measurement (no GPU was lent to this work):

* **Corpus.** Video lengths drawn (seeded) from a lognormal, in the drawn order, until they sum to ``--hours``; the
  last one is cut so that the sum is exact (in frames at ``--fps``), each capped at ``--max-hours``.
* **Units.** Whole videos, or with ``--segment-frames N`` segments ``[0, N), [N, 2N), ...`` of each video, each
  one unit; a segment after the first also runs ``--warmup`` frames before it (tracking, labels, smoothing: their
  results discarded) and seeks to its start (``seek_s``: decoding from the keyframe before it).
* **Scheduler (the Ray engine's, hamer/engines/ray.py).** Units in input order (no engine sorts them today; the
  whole videos also longest first: what sorting would buy) are cut into calls of ``--detect-workers`` units;
  each of the N workers (one a GPU) takes the next call when it is free (greedy list scheduling: an event queue of
  the workers' free times) and is busy until the call's last unit ends.
* **A call** runs its units at once, one detection thread (lane) each, feeding the worker's one GPU: a lane does at
  most one frame per ``lane_s`` (decode + MediaPipe + crop + write, one core), and the GPU one frame per ``gpu_s``
  (network for ``--hands`` crops) shared equally by the lanes still running; so with ``a`` lanes running each
  frame takes ``max(lane_s, a * gpu_s)``, exactly (a fluid model: phases between the lanes' ends). Plus
  ``unit_s`` per unit (opening a video, its MediaPipe; measured as the wall per extra video) and ``load_s`` per
  worker at the start.
* **Lanes that pull** (:func:`stream`, for comparison): each lane takes the next unit as soon as it is free, as the
  local engine's detection threads do on one machine (and as the Ray engine could: today it waits for a call's last
  unit); a lane is off the GPU while it opens its unit.

Reported per N: makespan (hours), the ideal (every worker's GPU busy all the time), GPU utilisation (network
seconds, warm-up included, / (N x makespan)), the tail (the last worker's end against the mean worker's end).
The CPU-side costs default to benchmarks/results/corpus.json (measured on a shared 2-core CPU); the GPU's to
HaMeR's published per-crop time. Writes ``NAME.json`` and ``NAME.md`` to ``--out``.

Run: ``python benchmarks/corpus_estimate.py`` (seconds; the results: the published GPU time) and
``python benchmarks/corpus_estimate.py --gpu-ms-per-crop 4 --detect-workers 8 --name corpus_estimate-batched``
(an assumed batched fp16 GPU); tests/test_corpus_estimate.py checks the scheduler.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "results" / "corpus.json"
GPU_MS_PER_CROP = 32.0  # HaMeR's published time of one crop's forward pass, RTX 3090, batch 1 (geopavlakos/hamer#1)
EPS = 1e-6  # frames or seconds a lane has left that count as none (float rounding)
KEYFRAME_INTERVAL = 250  # frames; x264's default keyint: a seek decodes at most this many frames before its target


@dataclass(frozen=True)
class Costs:
    """What a worker spends, in seconds: ``gpu_s`` network a frame on its GPU, ``lane_s`` a frame on one detection
    thread, ``lanes`` detection threads (= units a call), ``unit_s`` a unit, ``seek_s`` a segment's seek,
    ``load_s`` its start (network loading)."""

    gpu_s: float
    lane_s: float
    lanes: int
    unit_s: float = 0.0
    seek_s: float = 0.0
    load_s: float = 0.0

    def __post_init__(self) -> None:
        if self.lanes < 1 or min(self.gpu_s, self.lane_s) < 0 or max(self.gpu_s, self.lane_s) <= 0:
            raise ValueError(f"costs {self}: one lane or more, and a frame must take time")

    def per_frame(self, running: int) -> float:
        """Seconds a frame on each of ``running`` lanes that share the GPU."""
        return max(self.lane_s, running * self.gpu_s)


@dataclass(frozen=True)
class Unit:
    """A whole video or a segment of one: ``frames`` it writes, ``warmup`` frames run before them and discarded,
    ``seek``: it starts inside its video."""

    frames: int
    warmup: int = 0
    seek: bool = False

    @property
    def run_frames(self) -> int:
        return self.frames + self.warmup


@dataclass(frozen=True)
class Outcome:
    """A schedule: ``makespan_s``; ``ends_s`` each worker's last end; ``network_s`` the GPUs' busy seconds."""

    makespan_s: float
    ends_s: list[float]
    network_s: float

    def utilisation(self) -> float:
        return self.network_s / (len(self.ends_s) * self.makespan_s)

    def tail(self) -> float:
        """The last worker's end / the mean worker's end."""
        return self.makespan_s / (sum(self.ends_s) / len(self.ends_s))


def corpus_lengths(hours: float, fps: float, median_min: float, sigma: float, max_hours: float,
                   seed: int) -> list[int]:
    """Video lengths in frames, drawn in order from a lognormal (``median_min`` minutes, ``sigma`` of the log),
    each at least one frame and at most ``max_hours``, summing to exactly ``round(hours * 3600 * fps)``."""
    total = round(hours * 3600 * fps)
    if total < 1 or median_min <= 0 or sigma < 0:
        raise ValueError(f"{hours} hours at {fps} fps, median {median_min} min, sigma {sigma}: none can be drawn")
    cap = max(1, round(max_hours * 3600 * fps))
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    left = total
    while left > 0:
        draws = rng.lognormal(math.log(median_min * 60 * fps), sigma, size=1024)
        for frames in np.clip(np.rint(draws), 1, cap).astype(int):
            lengths.append(min(int(frames), left))
            left -= lengths[-1]
            if left == 0:
                break
    return lengths


def segments(lengths: Sequence[int], segment_frames: int | None, warmup: int) -> list[Unit]:
    """The units of the videos ``lengths`` (frames) in order: whole (``segment_frames`` None), or each cut into
    ``[0, N), [N, 2N), ...``, a segment after the first preceded by ``min(warmup, start)`` warm-up frames."""
    if segment_frames is None:
        return [Unit(n) for n in lengths]
    if segment_frames < 1 or warmup < 0:
        raise ValueError(f"segment frames {segment_frames} must be >= 1 and warm-up {warmup} >= 0")
    return [Unit(min(segment_frames, n - start), min(warmup, start), start > 0)
            for n in lengths for start in range(0, n, segment_frames)]


def call_seconds(frames: Sequence[int], costs: Costs) -> float:
    """Wall seconds of one call: its units' ``frames`` on one lane each, sharing one GPU (see the module)."""
    if len(frames) > costs.lanes:
        raise ValueError(f"{len(frames)} units in a call of {costs.lanes} lanes")
    seconds, done = 0.0, 0
    for i, n in enumerate(sorted(frames)):
        running = len(frames) - i
        seconds += (n - done) * costs.per_frame(running)
        done = n
    return seconds


def list_schedule(durations: Sequence[float], workers: int, start_s: float = 0.0) -> list[float]:
    """Greedy list scheduling: each job in order to the worker free first (the lowest index on a tie), every
    worker free at ``start_s``; each worker's end (``start_s`` if it got no job)."""
    if workers < 1:
        raise ValueError(f"{workers} workers")
    free = [(start_s, w) for w in range(workers)]
    for seconds in durations:
        at, w = heapq.heappop(free)
        heapq.heappush(free, (at + seconds, w))
    ends = [0.0] * workers
    for at, w in free:
        ends[w] = at
    return ends


def simulate(units: Sequence[Unit], workers: int, costs: Costs, longest_first: bool = False) -> Outcome:
    """The units on ``workers`` workers as the Ray engine runs them (see the module)."""
    order = sorted(units, key=lambda u: -u.run_frames) if longest_first else list(units)
    calls = [order[i:i + costs.lanes] for i in range(0, len(order), costs.lanes)]
    durations = [call_seconds([u.run_frames for u in call], costs)
                 + sum(costs.unit_s + (costs.seek_s if u.seek else 0.0) for u in call) for call in calls]
    ends = list_schedule(durations, workers, costs.load_s)
    return Outcome(max(ends), ends, sum(u.run_frames for u in units) * costs.gpu_s)


def stream(units: Sequence[Unit], workers: int, costs: Costs) -> Outcome:
    """The units on ``workers`` workers whose lanes each take the next unit as soon as they are free (the local
    engine's detection threads; no call boundary): an event queue of the workers' next lane events. A lane first
    spends its unit's ``unit_s`` (+ ``seek_s``) off the GPU, then runs its frames as in :func:`call_seconds`."""
    if workers < 1:
        raise ValueError(f"{workers} workers")
    todo = list(reversed(units))
    lanes: list[list[list[float]]] = [[] for _ in range(workers)]  # per worker, a lane: [seconds off the GPU, frames]
    clock = [costs.load_s] * workers
    events = [(costs.load_s, w) for w in range(workers)]
    while events:
        now, w = heapq.heappop(events)
        running, spent = lanes[w], now - clock[w]
        per_frame = costs.per_frame(sum(1 for lane in running if lane[0] <= EPS))
        for lane in running:  # since the worker's last event, at one rate
            if lane[0] <= EPS:
                lane[1] -= spent / per_frame
            else:
                lane[0] -= spent
        clock[w] = now
        running[:] = [lane for lane in running if lane[1] > EPS]
        while todo and len(running) < costs.lanes:
            unit = todo.pop()
            running.append([costs.unit_s + (costs.seek_s if unit.seek else 0.0), float(unit.run_frames)])
        if running:
            per_frame = costs.per_frame(sum(1 for lane in running if lane[0] <= EPS))
            heapq.heappush(events, (now + min(lane[1] * per_frame if lane[0] <= EPS else lane[0] for lane in running),
                                    w))
    return Outcome(max(clock), clock, sum(u.run_frames for u in units) * costs.gpu_s)


# ---------------------------------------------------------------------------------------------------- the report

def measured_defaults(path: Path = MEASURED) -> dict[str, float | str]:
    """The CPU-side costs measured by benchmarks/corpus.py: a lane's ms a frame (the local engine's decode + detect
    + crop + write, small network), the wall per extra video (local engine), decode ms a frame, a Ray worker's start
    with the full-size network on the default backend."""
    run = json.loads(path.read_text())
    local = run["small"]["paths"]["local"]
    ms = local["ms_per_frame"]
    return {"lane_ms": round(ms["decode"] + ms["detect"] + ms["crop"] + ms["write"], 1),
            "unit_s": local["overhead_per_extra_video_s"], "decode_ms": ms["decode"],
            "load_s": run["full"]["paths"]["ray-1-auto"]["worker_start_s"], "cpu": run["cpu"]}


def estimate(args: argparse.Namespace) -> dict:
    lengths = corpus_lengths(args.hours, args.fps, args.median_min, args.sigma, args.max_hours, args.seed)
    costs = Costs(gpu_s=args.gpu_ms_per_crop * args.hands / 1000, lane_s=args.lane_ms / 1000,
                  lanes=args.detect_workers, unit_s=args.unit_s, seek_s=args.seek_s, load_s=args.load_s)
    whole = segments(lengths, None, 0)
    pieces = segments(lengths, args.segment_frames, args.warmup)
    minutes = np.asarray(lengths) / args.fps / 60
    rows = []
    for n in args.gpus:
        got = {"whole": simulate(whole, n, costs), "whole_longest_first": simulate(whole, n, costs, True),
               "segments": simulate(pieces, n, costs), "whole_stream": stream(whole, n, costs),
               "segments_stream": stream(pieces, n, costs)}
        row = {"gpus": n, "ideal_h": got["whole"].network_s / n / 3600}
        for name, o in got.items():
            row[name] = {"makespan_h": o.makespan_s / 3600, "utilisation": o.utilisation(), "tail": o.tail()}
        rows.append(row)
    return {
        "assumed": {k: v for k, v in vars(args).items() if k not in ("out", "name")}, "costs": asdict(costs),
        "videos": len(lengths), "units_segmented": len(pieces),
        "warmup_share": sum(u.warmup for u in pieces) / sum(lengths),
        "video_minutes": {"mean": float(minutes.mean()), "median": float(np.median(minutes)),
                          "p1": float(np.percentile(minutes, 1)), "p99": float(np.percentile(minutes, 99)),
                          "max": float(minutes.max())},
        "longest_video_h": max(lengths) / args.fps / 3600, "rows": rows}


def duration(hours: float) -> str:
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def markdown(result: dict, measured_cpu: str) -> str:
    a, m = result["assumed"], result["video_minutes"]
    lines = [
        "# Time to finish a corpus on N GPUs (benchmarks/corpus_estimate.py): a simulation", "",
        f"`{result['command']}`", "",
        f"Corpus: {a['hours']:,g} hours at {a['fps']:g} fps, {result['videos']:,} videos whose lengths are drawn "
        f"(seed {a['seed']}) from a lognormal of median {a['median_min']:g} min and log-sigma {a['sigma']:g}, capped "
        f"at {a['max_hours']:g} h: mean {m['mean']:.1f} min, 1% under {m['p1'] * 60:.0f} s, 1% over "
        f"{m['p99'] / 60:.1f} h, the longest {result['longest_video_h']:.1f} h. Segments: {a['segment_frames']:,} "
        f"frames, {a['warmup']} frames of warm-up each: {result['units_segmented']:,} units, warm-up "
        f"{result['warmup_share']:.2%} more frames.", "",
        f"Per GPU: network {a['gpu_ms_per_crop']:g} ms a crop x {a['hands']} hands a frame (assumed, not measured "
        f"here); {a['detect_workers']} detection threads (`--detect-workers`, the units a Ray call takes), each "
        f"{a['lane_ms']:g} ms a frame (decode + MediaPipe + crop + write, measured on one core of a shared "
        f"{measured_cpu}: benchmarks/results/corpus.md); {a['unit_s']:g} s a unit, {a['seek_s']:g} s a segment's "
        f"seek, {a['load_s']:g} s a worker's start. Units in input order (as the engines take them today); "
        "`longest first`: the same whole videos sorted, for comparison (the Ray engine's calls of "
        f"{a['detect_workers']}: the longest videos together, sharing a GPU); `lanes pull`: each detection thread "
        "takes the next unit as soon as it is free (the local engine on one machine; the Ray engine waits for a "
        "call's last unit). Utilisation: the GPUs' network seconds / (N x makespan); tail: the last worker's end / "
        "the mean worker's end.", "",
        "| GPUs | ideal | whole videos | util. | tail | whole, longest first | segments | util. | tail | "
        "lanes pull: whole | util. | lanes pull: segments | util. |", "|" + "---|" * 13]
    for r in result["rows"]:
        cells = [str(r["gpus"]), duration(r["ideal_h"])]
        for name, columns in (("whole", 3), ("whole_longest_first", 1), ("segments", 3), ("whole_stream", 2),
                              ("segments_stream", 2)):
            o = r[name]
            cells += [duration(o["makespan_h"]), f"{o['utilisation']:.0%}", f"{o['tail']:.2f}"][:columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gpu_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",")]
    if min(counts) < 1:
        raise ValueError(text)
    return counts


def main() -> None:
    measured = measured_defaults()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=float, default=1000.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--median-min", type=float, default=10.0, help="median video length, minutes")
    p.add_argument("--sigma", type=float, default=1.5, help="sigma of the log of the length")
    p.add_argument("--max-hours", type=float, default=10.0, help="longest video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segment-frames", type=int, default=9000, help="frames a segment (9000: 5 min at 30 fps)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up frames before each segment after the first")
    p.add_argument("--gpu-ms-per-crop", type=float, default=GPU_MS_PER_CROP)
    p.add_argument("--hands", type=int, default=2, help="crops a frame")
    p.add_argument("--detect-workers", type=int, default=2, help="detection threads per GPU (units a call)")
    p.add_argument("--lane-ms", type=float, default=measured["lane_ms"], help="one detection thread's ms a frame")
    p.add_argument("--unit-s", type=float, default=measured["unit_s"], help="seconds a unit (open, MediaPipe)")
    p.add_argument("--seek-s", type=float, default=round(KEYFRAME_INTERVAL * measured["decode_ms"] / 1000, 2),
                   help="seconds a segment's seek (a keyframe interval decoded)")
    p.add_argument("--load-s", type=float, default=measured["load_s"], help="a worker's start, seconds")
    p.add_argument("--gpus", type=gpu_counts, default=[2**k for k in range(11)], help="comma-separated GPU counts")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="corpus_estimate")
    args = p.parse_args()
    result = {"command": " ".join(["python", "benchmarks/corpus_estimate.py", *sys.argv[1:]]), **estimate(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(markdown(result, measured["cpu"]))
    print(markdown(result, measured["cpu"]))


if __name__ == "__main__":
    main()
