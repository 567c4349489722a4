"""A corpus run: many inputs, one unit of work each, a manifest of their records, resumable after any kill.

A *unit* is one video, one image, or one folder of images (:mod:`hamer.units`); a long video runs as segments
joined into its files (:mod:`hamer.segments`; their records carry ``"segment": [start, end]``). Each unit's outputs
(``<name>.jsonl``, ``<name>.npz`` and with overlays ``<name>.overlay.*``) are written whole through atomic renames
(:func:`hamer.files.atomic_path`); ``OUT/manifest.jsonl`` (:mod:`hamer.manifest`) gets a ``started`` line before a
unit runs and a line when it ends, each flushed and fsynced as it is written; for each input the latest line
decides::

    {"input": "/data/a.mp4", "name": "a", "kind": "video", "status": "started", "pid": 4242, "host": "node1",
     "time": "2026-12-06T01:02:03+0000"}
    {"input": "/data/a.mp4", "name": "a", "kind": "video", "status": "done" | "failed" | "truncated",
     "frames": 300, "expected_frames": 300, "hands": 512, "seconds": 12.3, "error": null,
     "files": ["a.jsonl", "a.npz"], "pid": 4242, "host": "node1", "stat": [1048576, 1733446923000000000],
     "options": {"formats": ["jsonl", "npz"], "overlay": false, ..., "model": "/home/me/.hamer/hamer.ckpt"}}

``dispatched`` (Ray; instead of ``started``): sent to a worker, which does not report when it starts a unit.
``truncated``: fewer frames decoded than the container announces (``CAP_PROP_FRAME_COUNT``); the decoded frames
are written. ``failed``: nothing usable (unreadable input, an error while running it, a process that died running
it); its files are not written. ``interrupted``: the user stopped the run (Ctrl-C, SIGTERM) while it ran. ``pid``,
``host``: the process that wrote the line. ``stat``: the input's ``[size, mtime_ns]`` when it ran
(:func:`hamer.units.input_stat`; null when it could not be read), telling whether it changed since. ``options``:
the options that decide the outputs (:func:`hamer.units.fingerprint`). What a run does with an input the manifest
knows: :mod:`hamer.plan`. :func:`run_corpus` is the Python entry point; ``hamer run`` calls it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .engines import ENGINES, Engine, StageStats, make_engine
from .images import IMAGE_SUFFIXES, opencv_path
from .manifest import MANIFEST, TEMP_FILE, FolderLock, Manifest, RunError, clean_temp_files, this_run
from .plan import plan
from .run_types import InputError, ModelError, Progress
from .segments import Segments
from .storage import is_url, key, local_path, read_text
from .units import DEFAULT_FPS, VIDEO_SUFFIXES, Options, Unit, fingerprint, input_stat

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "MANIFEST", "TEMP_FILE", "InputError", "ModelError", "Options", "Progress", "Unit",
           "collect_units", "read_list", "run_corpus"]


# ---------------------------------------------------------------------------------------------------- inputs

def read_list(path: str) -> list[str]:
    """The inputs listed in a file or at a URL, one a line (blank lines and lines starting with # ignored);
    "-": stdin."""
    text = sys.stdin.read() if path == "-" else read_text(local_path(path))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def classify(path: Path) -> list[Unit]:
    """The units of an input path (a folder: its images as one unit, then each of its videos); InputError."""
    try:
        return _classify(path)
    except OSError as exc:  # unreadable folder, a name too long for the system...
        raise InputError(f"cannot be read ({exc.strerror or exc})") from None


def _classify(path: Path) -> list[Unit]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        units = [Unit(str(path), "folder", images=[str(p) for p in images], frames=len(images))] if images else []
        units += [probe_video(p) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not units:
            raise InputError("the folder holds no image or video files")
        return units
    if not path.is_file():
        raise InputError("no such file or folder")
    with open(path, "rb"):  # PermissionError here rather than a silent failure in OpenCV
        pass
    with opencv_path(path) as name:
        if cv2.haveImageReader(name):
            return [Unit(str(path), "image", images=[str(path)], frames=1)]
    return [probe_video(path)]


def probe_video(path: Path) -> Unit:
    """A video unit: its frame rate and announced frame count (a unit that will fail if it cannot be opened)."""
    with opencv_path(path) as name:
        cap = cv2.VideoCapture(name)
        try:
            opened = cap.isOpened()
            fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()
    if opened and not (np.isfinite(fps) and fps > 0):
        log.warning("%s: no frame rate in the file; assuming %g fps", path, DEFAULT_FPS)
        fps = DEFAULT_FPS
    return Unit(str(path), "video", frames=max(count, 0), fps=fps if opened else DEFAULT_FPS)


def collect_units(inputs: Iterable[str]) -> tuple[list[Unit], list[tuple[str, str]]]:
    """The units of ``inputs`` (each once, in order) and the inputs that cannot be read, with why."""
    units: list[Unit] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for arg in inputs:
        arg = local_path(arg)
        try:
            if is_url(arg):
                from .remote_inputs import classify_url

                found = classify_url(arg)
            else:
                found = classify(Path(arg))
        except (InputError, OSError) as exc:
            problems.append((arg, str(exc)))
            continue
        for unit in found:
            if unit.path not in seen:
                seen.add(unit.path)
                units.append(unit)
    return units, problems


# ---------------------------------------------------------------------------------------------------- the run

def run_corpus(inputs: Iterable[str], out: str | os.PathLike, options: Options | None = None, *,
               resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
               stats: StageStats | None = None, skipped: Callable[[Unit, str], None] | None = None
               ) -> list[dict[str, Any]]:
    """Run HaMeR on a corpus: the manifest records of the units run now (inputs that cannot be read included,
    as ``failed``), in the order they finished. What is run, skipped or refused: :mod:`hamer.plan`.

    Args:
        inputs: images, folders (their images as one unit, and each of their videos) and videos.
        out: the output folder (created); ``out/manifest.jsonl`` collects the records of every run into it. The
            run holds it (``out/.hamer-lock``) and first removes what dead runs left (``.hamer-tmp-*``). A URL
            (``s3://bucket/prefix``...): the folder in object storage (:mod:`hamer.remote_out`); inputs may be
            URLs too (:mod:`hamer.storage`).
        options: model, video and engine options (default :class:`Options`).
        resume: also retry the units that failed or were truncated.
        overwrite: run every unit again, replacing earlier results as the new ones are written.
        progress: told of written frames and finished units.
        stats: accumulates per-stage seconds.
        skipped: told of each unit not run now, with why.
    Raises:
        hamer.manifest.RunError: the folder is in use by another run (FolderBusy), earlier results would be
            replaced (OverwriteError), a link is in the way, or the manifest cannot be written (ManifestError).
        ModelError: the network or MediaPipe cannot be set up.
        ValueError: options that cannot work together (an unknown engine...).
    """
    options = options or Options()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    out = local_path(os.fspath(out))
    if is_url(out):
        from .remote_out import ObjectLock, ObjectManifest

        created = False
        lock, manifest = ObjectLock(out), ObjectManifest(out)
    engine = make_engine(options, stats)
    units, problems = collect_units(inputs)
    if not is_url(out):
        out = Path(out)
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
        lock, manifest = FolderLock(out), Manifest(out)
    try:
        with lock:
            return _run_locked(units, problems, out, options, engine, manifest, resume, overwrite, progress, skipped)
    finally:
        engine.close()
        if created and not any(out.iterdir()):
            out.rmdir()  # nothing was written (refused, or the model could not load)


def _run_locked(units: list[Unit], problems: list[tuple[str, str]], out: Path | str, options: Options,
                engine: Engine, manifest: Any, resume: bool, overwrite: bool, progress: Progress | None,
                skipped: Callable[[Unit, str], None] | None) -> list[dict[str, Any]]:
    """The run, holding the output folder's lock; ``manifest``: a :class:`Manifest` or, for a URL, a
    :class:`hamer.remote_out.ObjectManifest` (and what the URL holds is listed once, now)."""
    local = isinstance(out, Path)
    if local:
        exists = None
    else:
        from .remote_out import existing

        exists = existing(out)
    known = manifest.load()
    todo = plan(units, out, options, known, resume, overwrite, exists,
                frozenset(segment[0] for segment in manifest.segments))
    for unit, why in todo.skipped:
        log.info("%s: %s", unit.shown, why)
        if skipped is not None:
            skipped(unit, why)
    segments = Segments(out, options, manifest.segments, resume, overwrite, exists)
    work, suspects, ready = segments.split(todo.todo)
    suspects = todo.suspects + suspects
    if work or suspects:
        engine.check()
    if local:
        clean_temp_files(out)
    for unit, _ in todo.skipped:  # what a run killed after a video's record left
        if known[key(unit.path)]["status"] in ("done", "truncated"):
            segments.remove_parts(unit.name)
    if progress is not None:
        every = suspects + work
        frames = None if any(u.frames == 0 for u in every) else sum(_frames(u) for u in every)
        progress.start(len(todo.suspects) + len(todo.todo) + len(problems), frames)
    extra = {**this_run(), "options": fingerprint(options)}
    stat = {key(u.path): input_stat(u) for u in units}
    records: list[dict[str, Any]] = []

    in_flight: dict[tuple[str, Any], Unit] = {}

    def started(unit: Unit, status: str = "started") -> None:
        in_flight[key(unit.path), None if unit.segment is None else tuple(unit.segment)] = unit
        segment = {} if unit.segment is None else {"segment": list(unit.segment)}
        manifest.append({"input": key(unit.path), "name": unit.name, "kind": unit.kind, **segment,
                         "status": status, **this_run(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def finished(rec: dict[str, Any]) -> None:
        segment = rec.get("segment")
        in_flight.pop((rec["input"], None if segment is None else tuple(segment)), None)
        rec = {**rec, **extra, "stat": stat.get(rec["input"])}
        manifest.append(rec)
        if segment is not None:
            whole = segments.finished(rec)
            if whole is not None:
                finished(whole)
            return
        records.append(rec)
        if progress is not None:
            progress.unit(rec)
        if rec["status"] != "failed":
            segments.remove_parts(rec["name"])

    try:
        for arg, why in problems:
            finished({"input": key(arg), "name": None, "kind": None, "status": "failed", "frames": 0,
                      "expected_frames": 0, "hands": 0, "seconds": 0.0, "error": why, "files": []})
        for unit in ready:  # every segment done earlier
            finished(segments.join(unit))
        if suspects:  # first, and before the network loads here: each in a process of its own
            from .engines.isolated import run_isolated

            for unit in suspects:
                finished(run_isolated(unit, out, options, progress))
        if work:
            engine.run(work, out, finished, progress, started)
    except (KeyboardInterrupt, SystemExit):  # stopped by the user: the units in flight were not at fault
        for unit in list(in_flight.values()):
            started(unit, "interrupted")
        raise
    finally:
        manifest.close()
    if local:
        clean_temp_files(out)
    return records


def _frames(unit: Unit) -> int:
    """The frames a unit (a segment: of its video) announces."""
    return unit.frames if unit.segment is None else unit.segment[1] - unit.segment[0]
