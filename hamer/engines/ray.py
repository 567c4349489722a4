"""The Ray engine: the units of a corpus spread over the workers of a Ray cluster (``pip install "hamer[ray]"``).

Ray Data maps the units through :class:`UnitWorker`, a callable class: each of the ``workers`` actors loads the
network once and takes ``detect_workers`` units a call (a batch of whole units, so each video stays whole and in
order on one worker), which it runs as one local engine does: ``detect_workers`` detection threads feeding one
batched network and a writer, so one worker does what one ``--engine local`` process does. Workers write the units'
files into the output folder, which on a cluster must be storage every machine shares. The driver writes the
manifest and reports progress as calls finish. A worker process that dies mid-call is restarted and the call's
units run again by Ray's retries; their files appear once (atomic renames; a unit finished before the kill is
written again, whole, over its first copy), and the temporary files of the dead attempt are removed when the run
ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import ModelError, Options, Progress, Unit
from .local import LocalEngine, StageStats

log = logging.getLogger(__name__)


class UnitWorker:
    """A Ray Data worker: the network loaded once, then ``{"unit": [json]}`` batches of units, run together by a
    local engine with ``options.detect_workers`` detection threads -> ``{"record": [json]}``, one per unit.

    A record carries ``_worker``: this process's id, peak resident memory (MiB), stage seconds and frames so far,
    and when (``time.time()``) its first unit started, which the driver takes off before the manifest.
    """

    def __init__(self, options: Options, out: str) -> None:
        self.first_unit: float | None = None
        self.stats = StageStats()
        self.engine = LocalEngine(options, stats=self.stats)
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.first_unit is None:
            self.first_unit = time.time()
        records: list[dict[str, Any]] = []
        units = [Unit(**json.loads(text)) for text in batch["unit"]]
        self.engine.run(units, self.out, records.append)
        worker = {"pid": os.getpid(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": dict(self.stats.seconds), "frames": self.stats.frames,
                  "first_unit": self.first_unit}
        return {"record": np.array([json.dumps({**r, "_worker": worker}) for r in records], dtype=object)}


def init_local(num_cpus: int | None = None) -> None:
    """Start a local Ray whose workers import this copy of ``hamer`` (its folder on their PYTHONPATH)."""
    import ray

    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": path}})


def check_model_files(options: Options) -> None:
    """ModelError now, on the driver, when the model file the workers would load is missing (each worker would
    otherwise fail to start, again and again)."""
    from .. import configs

    if options.bbox_only:
        return
    path = Path(options.onnx) if options.backend == "onnx" and options.onnx else configs.data_paths(
        options.data, options.checkpoint).checkpoint
    if not path.is_file():
        raise ModelError(f"{path} does not exist (the workers load it from the same path)")


def run_ray(units: list[Unit], out: Path, options: Options, finished: Callable[[dict[str, Any]], None],
            progress: Progress | None = None, stats: StageStats | None = None) -> None:
    """Run ``units`` on Ray (``options.ray_address``; None: the running Ray, else a new local one), ``workers``
    actors with one GPU each when ``options.device`` is CUDA, one CPU each otherwise, each taking
    ``options.detect_workers`` units a call; ``finished(record)`` on the driver for each unit as its call ends.
    ``stats``: the workers' stage seconds, ``peak_rss_mib`` by worker pid, and as ``wall`` the time from the
    first unit's start on any worker to the last record (workers' start-up excluded)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    check_model_files(options)
    started = False
    if not ray.is_initialized():
        if options.ray_address is None:
            init_local()
        else:
            ray.init(address=options.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        started = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the command line has its own progress bar
    try:
        DataContext.get_current().enable_progress_bars = False
        gpu = options.device.startswith("cuda")
        if gpu and not ray.cluster_resources().get("GPU"):
            raise ModelError(f"--device {options.device}, but the Ray cluster has no GPU")
        # units a worker runs at once, as one local engine; one call in flight per worker, so that calls go to
        # the workers free for them rather than queue on the first one started
        per_call = options.detect_workers
        ds = ray.data.from_items([{"unit": json.dumps(dataclasses.asdict(u))} for u in units],
                                 override_num_blocks=-(-len(units) // per_call))
        ds = ds.map_batches(UnitWorker, fn_constructor_args=(options, str(out)), batch_size=per_call,
                            compute=ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=1),
                            num_cpus=0 if gpu else 1,
                            num_gpus=1 if gpu else 0, batch_format="numpy")
        workers: dict[int, dict[str, Any]] = {}
        try:
            for row in ds.iter_rows():
                rec = json.loads(row["record"])
                worker = rec.pop("_worker")
                workers[worker["pid"]] = worker
                if progress is not None:
                    progress.frames(rec["frames"])
                finished(rec)
        except ray.exceptions.ActorDiedError as exc:  # workers that cannot load the network: Ray gives up
            found = re.findall(r"ModelError: (.*)", str(exc))
            if not found:
                raise
            raise ModelError(f"the Ray workers cannot start: {found[-1]}") from exc
        if stats is not None:
            stats.wall += time.time() - min(w["first_unit"] for w in workers.values()) if workers else 0.0
            stats.units += len(units)
            for worker in workers.values():
                for stage, seconds in worker["seconds"].items():
                    stats.add(stage, seconds)
                stats.add("decode", 0.0, frames=worker["frames"])
                stats.peak_rss_mib[worker["pid"]] = worker["peak_rss_mib"]
    finally:
        if started:
            ray.shutdown()
