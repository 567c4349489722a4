"""The local engine: decoding and MediaPipe ahead of the network in worker threads, crops of several frames in one
network batch, results smoothed and written in frame order per unit.

Stages, connected by bounded queues (memory is bounded by their sizes, not by the corpus):

1. ``detect_workers`` threads, each taking whole units: decode, detection (a detector from ``options.detector``,
   default MediaPipe: one in VIDEO mode per video, one in IMAGE mode per thread for images) and tracking, frames
   in order;
2. the calling thread: crops of up to ``batch_size`` hands, from consecutive frames of any units, through the
   network at once (:meth:`hamer.pipeline.Reconstructor.batch`);
3. one writer thread (:mod:`hamer.engines.write_stage`): per unit, in frame order, the smoothing, then its files
   (a video's segment: its part file); when a unit ends, its record goes to the manifest.

The network is loaded once per engine (:meth:`LocalEngine.load`, or its first run). Outputs equal the
frame-by-frame path's (``VideoHands`` called per frame) up to the float rounding of a different batch composition
(README, *Corpora*).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..detectors import FrameRef
from ..frames import read_frames
from ..input_cache import InputCache
from ..pipeline import Reconstructor, best_per_label, find_hands
from ..remote_out import Upload, staged
from ..run_types import ModelError, Progress
from ..segments import warmup_frames
from ..tracking import HandTracker, OneEuroFilter, VideoHands
from ..units import Options, Unit
from .base import Finished, StageStats, Started, TimedNetwork
from .queues import EMPTY, Stopped, get, get_nowait, put
from .write_stage import End, Item, Job, WriteStage

if TYPE_CHECKING:
    from ..detectors import Detector

log = logging.getLogger(__name__)


def load_reconstructor(options: Options) -> Reconstructor | None:
    """The network of ``options.model``, loaded (None with ``bbox_only``); ModelError if it cannot be."""
    if options.bbox_only:
        return None
    from ..network import load_reconstructor as load

    model = options.model
    try:
        device = model.check()
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    try:
        return load(model, device)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(str(exc), data_problem=options.backend != "onnx") from exc


class LocalEngine:
    """Runs units on this machine: one network, ``options.detect_workers`` detection threads (see the module);
    an :class:`~hamer.engines.base.Engine`.

    The network and a first VIDEO-mode detector are loaded by :meth:`load` (or the first run), once; detectors
    are made by ``options.detector`` (default: MediaPipe's, from :func:`hamer.detection.detector_options` with
    ``max_hands``), and opened and closed by each run's threads. ``stats``: accumulates per-stage seconds.
    """

    def __init__(self, options: Options, stats: StageStats | None = None) -> None:
        if options.batch_size < 1 or options.detect_workers < 1:
            raise ValueError("batch_size and detect_workers must be at least 1")
        self.options = options
        self.stats = stats if stats is not None else StageStats()
        self.reconstructor: Reconstructor | None = None
        self.faces: np.ndarray | None = None
        self.loaded = False
        self._make_detector = options.detector
        if self._make_detector is None:
            from ..detection import MediaPipeDetectors, detector_options

            self._make_detector = MediaPipeDetectors(detector_options(num_hands=options.max_hands))
        self._spare_lock = threading.Lock()
        self._spare: Detector | None = None
        self._cache = InputCache(options.cache_size)
        self._upload: Upload | None = None

    def check(self) -> None:
        """ModelError for model options that cannot work here (the device, the precision...), before anything
        loads; the files are checked by loading them (:meth:`load`)."""
        if not self.options.bbox_only:
            try:
                self.options.model.check()
            except ValueError as exc:
                raise ModelError(str(exc)) from exc

    def load(self) -> None:
        """Load the network and make the first detector now (once); ModelError if either cannot be set up."""
        if self.loaded:
            return
        net = load_reconstructor(self.options)
        if net is not None:
            self.reconstructor = Reconstructor(TimedNetwork(net.network, self.stats), net.cfg, net.rescale_factor,
                                               net.camera_spec)
            self.faces = net.faces
        self._spare = self._detector_check()
        self.loaded = True

    def close(self) -> None:
        """Close the detector kept from the check, if no video used it."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    def _detector_check(self) -> Detector:
        """A VIDEO-mode detector, made now to fail early (ModelError); kept for the first video, whose own
        detector it becomes (a MediaPipe detector made and closed here would leave its ~90 MB of heap behind)."""
        try:
            return self._make_detector("VIDEO")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{'MediaPipe' if self.options.detector is None else 'detector'}: {exc}") from exc

    def _video_detector(self) -> Detector:
        """A new VIDEO-mode detector (the check's while unused)."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return spare if spare is not None else self._make_detector("VIDEO")

    # ------------------------------------------------------------------------------------------------ the run

    def run(self, units: list[Unit], out: Path | str, finished: Finished, progress: Progress | None = None,
            started: Started | None = None) -> None:
        """Run ``units``, writing into ``out`` (loading the model first, :meth:`load`); ``started(unit)`` as each
        begins (in its detection thread, before it is read), ``finished(record)`` as each ends (in the writer
        thread). An interrupt stops every stage; the units in flight leave no file. ``out`` a URL: each unit's
        files are written into a local staging folder and uploaded before its record (:mod:`hamer.remote_out`)."""
        self.load()
        out, self._upload = staged(out)
        o = self.options
        todo: queue.Queue[Unit | None] = queue.Queue()
        for unit in units:
            todo.put(unit)
        work: queue.Queue[Item | End | None] = queue.Queue(maxsize=max(2 * o.batch_size, 4))
        done: queue.Queue[Item | End | None] = queue.Queue(maxsize=max(2 * o.batch_size, 4))
        stop = threading.Event()
        errors: list[BaseException] = []
        start = time.perf_counter()

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def body() -> None:
                try:
                    target()
                except Stopped:
                    pass
                except BaseException as exc:  # noqa: BLE001 (re-raised in the calling thread)
                    errors.append(exc)
                    stop.set()
            return body

        live = [o.detect_workers]
        live_lock = threading.Lock()

        def detect_loop() -> None:
            images = None  # one IMAGE-mode detector for all the image units of this thread
            try:
                while True:
                    try:
                        unit = todo.get_nowait()
                    except queue.Empty:
                        return
                    if unit.kind != "video" and images is None:
                        images = self._make_detector("IMAGE")
                    if started is not None:
                        started(unit)
                    self._detect_unit(unit, images, work, stop)
            finally:
                if images is not None:
                    images.close()
                with live_lock:
                    live[0] -= 1
                    if live[0] == 0:
                        put(work, None, stop)

        workers = [threading.Thread(target=guarded(detect_loop), name=f"hamer-detect-{i}", daemon=True)
                   for i in range(o.detect_workers)]
        stage = WriteStage(o, self.faces, self.reconstructor, self.stats, self._upload)
        writer = threading.Thread(target=guarded(partial(stage.loop, out, done, finished, progress, stop)),
                                  name="hamer-write", daemon=True)
        for thread in [*workers, writer]:
            thread.start()
        try:
            self._network_loop(work, done, stop)
            writer.join()
        except Stopped:
            pass
        finally:
            stop.set()
            for thread in [*workers, writer]:
                thread.join()
            self.stats.wall += time.perf_counter() - start
            if self._upload is not None:
                self._upload.close()
        if errors:
            raise errors[0]

    def _detect_unit(self, unit: Unit, images: Detector | None, work: queue.Queue, stop: threading.Event
                     ) -> None:
        """Stage 1 for one unit: its frames, detected (and tracked) in order, then its end. A video gets a VIDEO-mode
        detector of its own; images use ``images``."""
        o = self.options
        job = Job(unit)
        video = unit.kind == "video"
        try:
            with self._video_detector() if video else nullcontext(images) as detector:
                if video:
                    make_filter = partial(OneEuroFilter, o.min_cutoff, o.beta) if o.smooth else None
                    job.video = VideoHands(detector, self.reconstructor, HandTracker(label_hold=o.label_hold),
                                           make_filter)
                frames = read_frames(unit, job.decoded, o.max_image_pixels, warmup_frames(o), self._cache)
                start = 0 if unit.segment is None else unit.segment[0]
                last_ms = -1
                while True:
                    t0 = time.perf_counter()
                    got = next(frames, None)
                    t1 = time.perf_counter()
                    if got is None:
                        break
                    index, time_s, source, img = got
                    if video:
                        last_ms = max(int(round(index * 1000.0 / unit.fps)), last_ms + 1)
                        tracked = job.video.track(img, last_ms, FrameRef(source, index))
                        hands, detections = tracked.hands, tracked.detections
                    else:
                        tracked = None
                        hands, detections = find_hands(img, detector=detector, select=best_per_label,
                                                       frame=FrameRef(source, index))
                    self.stats.add("decode", t1 - t0)
                    self.stats.add("detect", time.perf_counter() - t1)
                    if index < start:  # warm-up: only the smoothing needs the network
                        job.warmup.append((index, tuple(hands)))
                        if not o.smooth:
                            continue
                    put(work, Item(job, index, time_s, source, img, tuple(hands), detections, tracked), stop)
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 (recorded: the unit failed, the run goes on)
            log.debug("unit %s failed", unit.shown, exc_info=True)
            job.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        put(work, End(job), stop)

    def _network_loop(self, work: queue.Queue, done: queue.Queue, stop: threading.Event) -> None:
        """Stage 2: the crops of consecutive frames (up to ``batch_size``) through the network at once; a batch
        runs as soon as no frame is waiting, so the network never waits for a full one."""
        size = self.options.batch_size
        batch: list[Item] = []
        crops = 0
        while True:
            item = get(work, stop) if not batch else get_nowait(work)
            full = isinstance(item, Item) and (crops + len(item.hands) > size or len(batch) >= size)
            if item is EMPTY or not isinstance(item, Item) or full:
                self._reconstruct(batch, done, stop)  # a unit's end or the run's follows its frames
                batch, crops = [], 0
            if isinstance(item, Item):
                batch.append(item)
                crops += len(item.hands)
            elif item is not EMPTY:
                put(done, item, stop)
                if item is None:
                    return

    def _reconstruct(self, batch: list[Item], done: queue.Queue, stop: threading.Event) -> None:
        if not batch:
            return
        if self.reconstructor is not None:
            start = time.perf_counter()
            network_before = self.stats.seconds["network"]
            results = self.reconstructor.batch([(item.img, item.hands) for item in batch])
            self.stats.add("crop", time.perf_counter() - start - (self.stats.seconds["network"] - network_before))
            for item, hands in zip(batch, results, strict=True):
                item.done = hands
        for item in batch:
            put(done, item, stop)
