"""What every engine is (:class:`Engine`) and the per-stage timings they fill in (:class:`StageStats`,
:class:`TimedNetwork`)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..run_types import Progress
from ..units import Options, Unit

Finished = Callable[[dict[str, Any]], None]  # told each finished unit's record
# told each unit as it begins; an engine that knows only when a unit is sent to a worker (Ray) adds
# status="dispatched"
Started = Callable[..., None]


class StageStats:
    """Seconds spent per stage (summed over threads and workers), frames, units, the wall time of the runs and
    (Ray) the peak resident memory of each worker process, MiB by pid; thread-safe."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.frames = 0
        self.units = 0
        self.wall = 0.0
        self.peak_rss_mib: dict[int, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, frames: int = 0) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.frames += frames


class TimedNetwork:
    """The network runtime, timing its calls into ``stats``."""

    def __init__(self, network: Callable[[np.ndarray], dict[str, np.ndarray]], stats: StageStats) -> None:
        self.network, self.stats = network, stats

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return self.network(inputs)
        finally:
            self.stats.add("network", time.perf_counter() - start)


class Engine(Protocol):
    """Runs the units of a corpus run (:func:`hamer.corpus.run_corpus`), made from the run's options; ``stats``
    accumulates per-stage seconds."""

    def __init__(self, options: Options, stats: StageStats | None = None) -> None: ...

    def check(self) -> None:
        """Fail early, on the driver, before anything is written: ValueError for options it cannot take,
        ModelError when it cannot set up the model (a missing model file, too few GPUs)."""

    def run(self, units: list[Unit], out: Path, finished: Finished, progress: Progress | None = None,
            started: Started | None = None) -> None:
        """Run ``units``, writing their files into ``out``; ``started(unit)`` as each begins (where the engine
        knows it), ``finished(record)`` as each ends; ``progress`` told of the frames written. ModelError when
        the model cannot be set up."""

    def close(self) -> None:
        """Free what it holds (MediaPipe detectors...)."""
