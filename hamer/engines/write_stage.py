"""Stage 3 of the local engine (:mod:`hamer.engines.local`): per unit, in frame order, the smoothing of
:meth:`hamer.tracking.VideoHands.finish`, then :class:`hamer.unit_writer.UnitWriter` (a video's segment,
:mod:`hamer.segments`: its part file, the warm-up frames before it only smoothed); when a unit ends, its files are
closed (an output URL: uploaded) and its record goes to ``finished``. Also the units and frames between the stages."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..frames import Decoded, outcome
from ..outputs import Frame
from ..pipeline import Reconstructor, frame_result
from ..remote_out import Upload
from ..results import Hand
from ..run_types import Progress
from ..segment_parts import PartWriter, Warmup, open_writer
from ..tracking import TrackedFrame, VideoHands
from ..unit_writer import UnitWriter
from ..units import Options, Unit, record
from .base import StageStats
from .queues import Stopped, get

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """A unit in flight."""

    unit: Unit
    video: VideoHands | None = None
    decoded: Decoded = field(default_factory=Decoded)
    start: float = field(default_factory=time.perf_counter)
    error: str | None = None
    warmup: Warmup = field(default_factory=list)  # a segment's warm-up frames: (index, tracked hands)


@dataclass(eq=False)
class Item:
    """One frame between the stages."""

    job: Job
    index: int
    time_s: float | None
    source: str
    img: np.ndarray
    hands: tuple[Hand, ...]
    detections: tuple | None
    tracked: TrackedFrame | None
    done: list[Hand] | None = None


@dataclass(eq=False)
class End:
    """The end of a unit's frames."""

    job: Job


class WriteStage:
    """The writer thread of one run (see the module): ``faces`` the MANO triangles, ``reconstructor`` the network
    (None with ``bbox_only``), ``upload`` the output URL's (None for a folder)."""

    def __init__(self, options: Options, faces: np.ndarray | None, reconstructor: Reconstructor | None,
                 stats: StageStats, upload: Upload | None) -> None:
        self.options, self.faces, self.reconstructor = options, faces, reconstructor
        self.stats, self.upload = stats, upload

    def loop(self, out: Path, done: queue.Queue, finished: Callable[[dict[str, Any]], None],
                    progress: Progress | None, stop: threading.Event) -> None:
        """Stage 3: per unit, in frame order, smoothing and the files; a record when the unit ends."""
        writers: dict[Job, UnitWriter] = {}
        failed: set[Job] = set()
        try:
            while True:
                item = get(done, stop)
                if item is None:
                    return
                if isinstance(item, End):
                    self.end_unit(item.job, writers.pop(item.job, None), item.job in failed, out, finished)
                    failed.discard(item.job)
                    continue
                job = item.job
                if job in failed:
                    continue
                if job.unit.segment is not None and item.index < job.unit.segment[0]:  # a warm-up frame
                    self.result(item)  # the filters' state at the segment's start
                    continue
                start = time.perf_counter()
                try:
                    writer = writers.get(job)
                    if writer is None:
                        writer = writers[job] = open_writer(job.unit, out, self.options, self.faces,
                                                            job.warmup).__enter__()
                    writer.add(Frame(item.source, item.index, item.time_s, self.result(item)), item.img)
                except (OSError, ValueError) as exc:
                    job.error = f"cannot write its outputs: {exc}"
                    failed.add(job)
                    broken = writers.pop(job, None)
                    if broken is not None:
                        discard(broken, exc)
                self.stats.add("write", time.perf_counter() - start, frames=1)
                if progress is not None:
                    progress.frames(1)
        finally:
            for writer in writers.values():  # interrupted: no partial file
                discard(writer, Stopped())

    def result(self, item: Item) -> Any:
        hands = item.hands if item.done is None else item.done
        if item.tracked is not None:
            return item.job.video.finish(item.tracked, hands)
        return frame_result(item.img.shape, hands, item.detections, self.reconstructor)

    def end_unit(self, job: Job, writer: UnitWriter | None, write_failed: bool, out: Path,
                  finished: Callable[[dict[str, Any]], None]) -> None:
        unit = job.unit
        if job.error is not None or write_failed:
            if writer is not None:
                discard(writer, Stopped())
            status, error, files = "failed", job.error, []
        else:
            status, error = outcome(unit, job.decoded)
            files = []
            if status != "failed":
                try:
                    if writer is None:  # no frame at all (e.g. every image of a folder unreadable)
                        writer = open_writer(job.unit, out, self.options, self.faces, job.warmup).__enter__()
                    writer.__exit__(None, None, None)
                    files = [f for f in writer.files if (out / f).exists()]
                    if self.upload is not None:
                        self.upload.publish(files)
                except (OSError, ValueError) as exc:  # a full disk, a damaged --pose-base, a link in the way
                    status, error = "failed", f"cannot write its outputs: {exc}"
                    if self.upload is not None:
                        self.upload.discard(unit.files(self.options.formats, self.options.overlay))
                        files = []
        frames = 0 if writer is None else writer.frames
        hands = 0 if writer is None else writer.hands
        self.stats.units += 1
        finished({**record(unit, status, frames, hands, time.perf_counter() - job.start, error, files),
                  "node": {"host": socket.gethostname()}})


def discard(writer: UnitWriter | PartWriter, exc: BaseException) -> None:
    """Close ``writer`` without its files; an error doing so (the full disk that failed it) is the unit's already."""
    try:
        writer.__exit__(type(exc), exc, exc.__traceback__)
    except (OSError, ValueError) as again:
        log.debug("%s: %s while discarding its outputs", writer.unit.shown, again)
