"""The Ray engine: the units of a corpus spread over the workers of a Ray cluster (``pip install "hamer[ray]"``).

``workers`` Ray actors (:class:`UnitWorker`) each load the network once and take ``detect_workers`` units a call
(whole units, so each video, or each segment of a long one, stays whole and in order on one worker; the driver
joins a video's segments, :mod:`hamer.segments`), which they run as one local engine does:
``detect_workers`` detection threads feeding one batched network and a writer. One call is in flight per worker, so
calls go to the workers free for them. Workers write the units' files into the output folder, which on a cluster
must be storage every machine shares; the driver writes the manifest (each record naming the node that ran it)
and reports progress as calls finish.

A worker that dies mid-call (its process killed, its node lost) is restarted by Ray, on any node with the resources;
the call's units run again one by one (a unit finished before the death is written again, whole, over its first
copy: atomic renames), and the temporary files of the dead attempt are removed when the run ends. A unit whose
worker dies ``MAX_ATTEMPTS`` times is recorded failed.

A local Ray that the run starts (:class:`LocalRay`) is killed with it, however the driver ends (a watchdog,
:mod:`hamer.engines.ray_watchdog`). Ray's own messages (its token-authentication notice, its loggers) show only when
this module logs at INFO (``hamer -v``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..run_types import ModelError, Progress
from ..units import Options, Unit, record
from . import ray_watchdog as watchdog
from .base import Finished, StageStats, Started
from .local import LocalEngine

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of a unit whose Ray worker dies each time, before it is recorded failed
_REST_S = 1.0  # between pings of a worker Ray is restarting


class UnitWorker:
    """A Ray worker (an actor): the network loaded once, then calls of a few units (JSON), run together by a local
    engine with ``options.detect_workers`` detection threads -> their records (JSON), one per unit.

    A record names the node that ran it, ``node``: ``{"host": hostname, "ip": the node's IP, "ray_node_id": ...,
    "gpus": the GPU ids Ray gave this worker}``. It carries ``_worker``: this process's id, peak resident memory
    (MiB), stage seconds and frames so far, and when (``time.time()``) its first unit started, which the driver
    takes off before the manifest.

    A worker whose model cannot be set up stays up and answers :meth:`ping` with the error, which the driver
    raises as ModelError (a constructor that raised would be restarted by Ray, again and again).
    """

    def __init__(self, options: Options, out: str) -> None:
        import ray

        context = ray.get_runtime_context()
        self.node = {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
                     "ray_node_id": context.get_node_id(),
                     "gpus": [str(g) for g in context.get_accelerator_ids().get("GPU", [])]}
        self.first_unit: float | None = None
        self.stats = StageStats()
        self.engine = LocalEngine(options, stats=self.stats)
        self.out = out  # a folder every node shares, or a URL (each unit's files uploaded by its worker)
        self.model_error: tuple[str, bool] | None = None  # (message, data_problem)
        try:
            self.engine.load()
        except ModelError as exc:
            self.model_error = (str(exc), exc.data_problem)

    def ping(self) -> tuple[str, bool] | None:
        """Answers once the worker is up: None, or why its model cannot be set up (message, data_problem)."""
        return self.model_error

    def run(self, units: list[str]) -> list[str]:
        if self.first_unit is None:
            self.first_unit = time.time()
        records: list[dict[str, Any]] = []
        self.engine.run([_unit(text) for text in units], self.out, records.append)
        worker = {"pid": os.getpid(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": dict(self.stats.seconds), "frames": self.stats.frames,
                  "first_unit": self.first_unit}
        return [json.dumps({**r, "node": self.node, "_worker": worker}) for r in records]


class LocalRay:
    """A Ray started on this machine by this process, and its watchdog (:mod:`hamer.engines.ray_watchdog`): when
    this process ends, however it ends, every process of that Ray is killed."""

    def __init__(self, num_cpus: int | None = None, num_gpus: float | None = None,
                 temp_dir: str | None = None) -> None:
        """Start it: workers import this copy of ``hamer`` (its folder on their PYTHONPATH); Ray's own messages
        only when this module logs at INFO (``hamer -v``). ``temp_dir``: Ray's sessions (default /tmp/ray; short:
        Ray's Unix sockets live there)."""
        import ray

        token = secrets.token_hex(16)
        self.watchdog: subprocess.Popen | None = None
        if sys.platform.startswith("linux"):  # it reads /proc
            self.watchdog = subprocess.Popen([sys.executable, watchdog.__file__, token], stdin=subprocess.PIPE,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True)
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        try:
            # PYTHONPATH in Ray's own environment, which its workers inherit, rather than in a runtime_env: the
            # workers Ray starts ahead (one per CPU) then serve this job, where a runtime_env would have them
            # replaced by new ones (a first call on 2 workers took 1.1 s and 2.0 CPU-s so, 0.34 s and 0.49 CPU-s now)
            with ray_env({**watchdog.environment(token), "PYTHONPATH": path}):
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=temp_dir,
                         **quiet_init_args())
        except BaseException:  # what did start goes now
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Shut Ray down, then have the watchdog kill what is left of it, and wait for it (at most GIVE_UP_S)."""
        import ray

        try:
            ray.shutdown()
        finally:
            if self.watchdog is not None:
                self.watchdog.stdin.close()
                try:
                    self.watchdog.wait(timeout=watchdog.GIVE_UP_S + 5)
                except subprocess.TimeoutExpired:
                    log.warning("the Ray watchdog (pid %d) did not end", self.watchdog.pid)


def verbose() -> bool:
    """Whether Ray may speak: this module logs at INFO (``hamer -v``)."""
    return log.isEnabledFor(logging.INFO)


@contextmanager
def ray_env(extra: dict[str, str]) -> Iterator[None]:
    """Around ``ray.init``: ``extra`` in the environment while Ray starts (its processes inherit it), and this
    thread's SIGTERM handler kept: Ray replaces it with one that exits with status 15 (and its core worker with
    one that prints a stack trace), so that a SIGTERM would skip the caller's cleanup."""
    before = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    except SystemExit as exc:  # Ray's handler, while Ray was starting
        if exc.code == signal.SIGTERM and callable(sigterm):
            sigterm(signal.SIGTERM, None)
        raise
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


@contextmanager
def sigterm_through_ray() -> Iterator[None]:
    """The caller's SIGTERM handler (the command line's: exit status 143 after cleanup) still decides: Ray's
    blocking calls turn the exception a signal handler raises into ``SystemExit(1)``, so a SIGTERM is noted and its
    handler called again when one comes out. Nothing to do outside the main thread or without a Python handler."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        caught.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except SystemExit:
        if caught:
            previous(signal.SIGTERM, None)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def quiet_init_args() -> dict[str, Any]:
    """``ray.init`` arguments: the "ray" loggers at WARNING with -v (workers' output forwarded), else at ERROR
    (Ray's notice that it enabled token authentication for a local cluster is a warning)."""
    loud = verbose()
    return {"log_to_driver": loud, "logging_level": logging.WARNING if loud else logging.ERROR}


class RayEngine:
    """Runs units on the workers of a Ray cluster (see the module); an :class:`~hamer.engines.base.Engine`.
    ``stats``: the workers' stage seconds, ``peak_rss_mib`` by worker pid, and as ``wall`` the time from the first
    unit's start on any worker to the last record (workers' start-up excluded)."""

    def __init__(self, options: Options, stats: StageStats | None = None) -> None:
        self.options, self.stats = options, stats

    def check(self) -> None:
        """On the driver: ValueError for options that cannot work (the device is the workers'), ModelError when the
        model file the workers would load is missing (each worker would otherwise fail to start, again and
        again); the GPUs per worker (:func:`gpus_per_worker`)."""
        options = self.options
        gpus_per_worker(options)
        if options.bbox_only:
            return
        options.model.check(device_here=False)
        path = options.model.model_file
        if not path.is_file():
            raise ModelError(f"{path} does not exist (the workers load it from the same path)")

    def run(self, units: list[Unit], out: Path, finished: Finished, progress: Progress | None = None,
            started: Started | None = None) -> None:
        """Run ``units`` on Ray (``options.ray_address``; None: the running Ray, else a new :class:`LocalRay`):
        ``workers`` actors of :func:`gpus_per_worker` GPUs each, with 0 CPUs on a CUDA device, else 1, each taking
        ``options.detect_workers`` units a call; ``finished(record)`` on the driver for each unit as its call ends,
        ``started(unit, status="dispatched")`` as its call is sent (the workers do not report a unit's start): a
        record that accounts for the files a killed run's worker may have written or uploaded; such a unit runs
        again (not alone, as a ``started`` one would, on the driver).

        The units of a call whose worker dies (the process killed, its node lost) run again one by one, on any
        worker: Ray restarts the dead one on any node with the resources; a unit whose worker died
        ``MAX_ATTEMPTS`` times running it is recorded ``failed``. Workers that cannot set up the model: ModelError."""
        with sigterm_through_ray():
            _run(units, out, self.options, gpus_per_worker(self.options), finished, progress, self.stats,
                 None if started is None else partial(started, status="dispatched"))

    def close(self) -> None:
        """Nothing: a run's workers (and a Ray it started) end with it."""


def _run(units: list[Unit], out: Path, options: Options, gpus: float, finished: Callable[[dict[str, Any]], None],
         progress: Progress | None, stats: StageStats | None, dispatched: Callable[[Unit], None] | None) -> None:
    import ray

    started: LocalRay | bool | None = None
    if not ray.is_initialized():
        if options.ray_address is None:
            started = LocalRay()
        else:
            with ray_env({}):
                ray.init(address=options.ray_address, **quiet_init_args())
            started = True
    pool: list[Any] = []
    try:
        have = ray.cluster_resources().get("GPU", 0)
        if gpus > have:  # rather than waiting for one forever
            raise ModelError(f"{gpus:g} GPU(s) per worker (--device {options.device}, --gpus-per-worker), but the "
                             f"Ray cluster has {f'{have:g} GPU(s)' if have else 'no GPU'}")
        per_call = options.detect_workers
        calls = deque((0, [json.dumps(dataclasses.asdict(u)) for u in units[i:i + per_call]])
                      for i in range(0, len(units), per_call))
        actor = ray.remote(UnitWorker).options(num_cpus=0 if options.device.startswith("cuda") else 1,
                                               num_gpus=gpus, max_restarts=-1, max_task_retries=0)
        pool = [actor.remote(options, str(out)) for _ in range(min(options.workers, len(calls)))]
        workers = _run_calls(calls, pool, finished, progress, dispatched)
        if stats is not None:
            stats.wall += time.time() - min(w["first_unit"] for w in workers.values()) if workers else 0.0
            stats.units += len(units)
            for worker in workers.values():
                for stage, seconds in worker["seconds"].items():
                    stats.add(stage, seconds)
                stats.add("decode", 0.0, frames=worker["frames"])
                stats.peak_rss_mib[worker["pid"]] = worker["peak_rss_mib"]
    finally:
        for worker in pool:  # on a Ray that outlives the run, its workers would hold their CPUs and GPUs
            ray.kill(worker)
        if isinstance(started, LocalRay):
            started.shutdown()
        elif started:
            ray.shutdown()


def _run_calls(calls: deque[tuple[int, list[str]]], pool: list[Any], finished: Callable[[dict[str, Any]], None],
               progress: Progress | None, dispatched: Callable[[Unit], None] | None = None
               ) -> dict[int, dict[str, Any]]:
    """Run ``calls`` ((worker deaths so far, units as JSON)) on the ``pool`` of workers, one call in flight per
    worker; the workers' ``_worker`` stats by pid.

    A worker that died is pinged every ``_REST_S`` until Ray has restarted it (a call sent earlier would fail at
    once, ``ActorUnavailableError``, and count as a death); one that cannot be restarted leaves the pool."""
    import ray

    idle: list[Any] = []
    resting: list[tuple[float, Any]] = []  # (when to ping it, worker)
    pinging: dict[Any, Any] = {worker.ping.remote(): worker for worker in pool}  # its model set up, or why not
    running: dict[Any, tuple[Any, int, list[str]]] = {}
    workers: dict[int, dict[str, Any]] = {}
    while calls or running:
        now = time.monotonic()
        for when, worker in [r for r in resting if r[0] <= now]:
            resting.remove((when, worker))
            pinging[worker.ping.remote()] = worker
        while idle and calls:
            worker = idle.pop()
            deaths, call = calls.popleft()
            running[worker.run.remote(call)] = (worker, deaths, call)
            for text in call if dispatched is not None else []:
                dispatched(_unit(text))
        if not (idle or resting or pinging or running):
            raise ModelError(f"every Ray worker died; {sum(len(c) for _, c in calls)} unit(s) not run")
        if not (running or pinging):  # only resting workers
            time.sleep(max(0.0, min(when for when, _ in resting) - time.monotonic()))
            continue
        ready, _ = ray.wait([*running, *pinging], num_returns=1, timeout=_REST_S)
        if not ready:
            continue
        (ref,) = ready
        worker = pinging.pop(ref, None)
        if worker is not None:
            try:
                model_error = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                resting.append((time.monotonic() + _REST_S, worker))
            except ray.exceptions.RayActorError as exc:
                log.warning("a Ray worker cannot be restarted: %s", exc)
            else:
                if model_error is not None:  # every worker would fail the same way
                    message, data_problem = model_error
                    raise ModelError(f"the Ray workers cannot start: {message}", data_problem)
                idle.append(worker)
            continue
        worker, deaths, call = running.pop(ref)
        try:
            texts = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            resting.append((time.monotonic() + _REST_S, worker))
            log.info("a Ray worker died running %d unit(s); they run again: %s", len(call), exc)
            for text in call:  # one by one, so that a unit that kills its worker fails alone
                if deaths + 1 < MAX_ATTEMPTS:
                    calls.append((deaths + 1, [text]))
                else:
                    finished(record(_unit(text), "failed", 0, 0, 0.0,
                                    f"its Ray worker died {MAX_ATTEMPTS} times running it", []))
            continue
        idle.append(worker)
        for text in texts:
            rec = json.loads(text)
            worker_stats = rec.pop("_worker")
            workers[worker_stats["pid"]] = worker_stats
            if progress is not None:
                progress.frames(rec["frames"])
            finished(rec)
    return workers


def gpus_per_worker(options: Options) -> float:
    """The GPUs each worker claims (``options.gpus_per_worker``; default 1 with a CUDA device, else 0);
    ValueError when a CUDA device gets none."""
    gpu = options.device.startswith("cuda")
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpu else 0.0)
    if not (gpus >= 0 and (gpus > 0 or not gpu)):
        raise ValueError(f"gpus_per_worker must be > 0 with device {options.device}, got {gpus}")
    return gpus


def _unit(text: str) -> Unit:
    """A unit sent to a worker as JSON (its segment a tuple again, as :class:`Unit` has it)."""
    fields = json.loads(text)
    if fields.get("segment") is not None:
        fields["segment"] = tuple(fields["segment"])
    return Unit(**fields)
