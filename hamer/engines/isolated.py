"""A unit run alone in a child process, so that an input that kills its process (a native crash, an out-of-memory
kill) fails that unit instead of the run: what a run does with the *suspects* of :mod:`hamer.plan`.

The child (``multiprocessing``'s spawn start method: a fresh interpreter) loads the model, runs the unit with the
local engine, writing its files into the output folder, and sends its record back; a child that dies by a signal
gives a ``failed`` record naming the signal.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import time
from pathlib import Path
from typing import Any

from ..manifest import DIED
from ..run_types import ModelError, Progress
from ..units import Options, Unit, record

log = logging.getLogger(__name__)

NATIVE_CRASHES = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT})


def death(exitcode: int) -> str:
    """Why a child process ended without a record: its signal, in words, or its exit status."""
    if exitcode >= 0:
        return f"{DIED}: it exited with status {exitcode}"
    signum = -exitcode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum in NATIVE_CRASHES:
        return f"{DIED}: {name} (a native crash)"
    if signum == signal.SIGKILL:
        return f"{DIED}: {name} (out of memory?)"
    return f"{DIED}: {name}"


def run_isolated(unit: Unit, out: Path | str, options: Options, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``unit`` in a child process; its record (``failed`` with the cause when the child died).
    ModelError when the child cannot set up the model."""
    where = "" if unit.segment is None else f" (frames [{unit.segment[0]}, {unit.segment[1]}))"
    log.warning("%s%s: an earlier run died while running it; running it alone in a child process",
                unit.shown, where)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(unit, str(out), options, send), name="hamer-suspect", daemon=True)
    start = time.perf_counter()
    try:
        child.start()
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # e.g. a camera given as a lambda
        return record(unit, "failed", 0, 0, 0.0, f"cannot run it in a child process (its options cannot be "
                      f"passed to one: {exc})", [])
    finally:
        send.close()
    try:
        message = receive.recv()
    except EOFError:
        message = None
    finally:
        child.join()
        receive.close()
    if message is None:
        return record(unit, "failed", 0, 0, time.perf_counter() - start, death(child.exitcode), [])
    kind, *body = message
    if kind == "model":
        raise ModelError(*body)
    rec = body[0]
    if progress is not None:
        progress.frames(rec["frames"])
    return rec


def _child(unit: Unit, out: str, options: Options, send: Any) -> None:
    """The child process: the model, then the unit; its record (or the model's error) to ``send``."""
    from .local import LocalEngine

    engine = LocalEngine(options)
    try:
        engine.load()
    except ModelError as exc:
        send.send(("model", str(exc), exc.data_problem))
        return
    try:
        engine.run([unit], out, lambda rec: send.send(("record", rec)))
    finally:
        engine.close()
