"""A corpus run: many inputs, one unit of work each, a manifest of their records, resumable after any kill.

A *unit* is one video, one image, or one folder of images (:mod:`hamer.units`). Each unit's outputs
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .images import IMAGE_SUFFIXES, ImageError, opencv_path, read_image
from .manifest import MANIFEST, TEMP_FILE, FolderLock, Manifest, RunError, clean_temp_files, refuse_link, this_run
from .outputs import Frame, write_image
from .plan import plan
from .units import DEFAULT_FPS, Options, Unit, fingerprint, input_stat
from .video import VideoFileWriter

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "TEMP_FILE", "InputError", "ModelError", "Options", "Progress", "Unit", "UnitWriter",
           "collect_units", "read_frames", "record", "run_corpus"]
ENGINES = ("local", "ray")
# Files of a folder taken as videos (a file given by path is probed whatever its suffix).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".3gp", ".ogv"})


class InputError(Exception):
    """An input that cannot be read."""


class ModelError(Exception):
    """HaMeR or MediaPipe cannot be set up: nothing can run. ``data_problem``: the data folder is at fault."""

    def __init__(self, message: str, data_problem: bool = False) -> None:
        super().__init__(message)
        self.data_problem = data_problem


class Progress(Protocol):
    """What a run reports as it goes (the command line's progress bar)."""

    def start(self, units: int, frames: int | None) -> None:
        """The run will do ``units`` units of ``frames`` frames in all (None: unknown)."""

    def frames(self, count: int) -> None:
        """``count`` more frames were written."""

    def unit(self, record: dict[str, Any]) -> None:
        """A unit finished; ``record`` is its manifest line."""


# ---------------------------------------------------------------------------------------------------- inputs

def read_list(path: str) -> list[str]:
    """The inputs listed in a file, one a line (blank lines and lines starting with # ignored); "-": stdin."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
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
        try:
            found = classify(Path(arg))
        except (InputError, OSError) as exc:
            problems.append((arg, str(exc)))
            continue
        for unit in found:
            if unit.path not in seen:
                seen.add(unit.path)
                units.append(unit)
    return units, problems


def pose_base(option: str | None, unit: Unit) -> Path | None:
    """The Holistic .pose to upgrade for ``unit``: ``--pose-base FILE``, or ``DIR/<name>.pose`` when that exists."""
    if option is None:
        return None
    base = Path(option)
    if not base.is_dir():
        return base
    path = Path(unit.path)
    candidate = base / f"{path.resolve().name if unit.kind == 'folder' else path.stem}.pose"
    return candidate if candidate.is_file() else None


def record(unit: Unit, status: str, frames: int, hands: int, seconds: float, error: str | None,
           files: Sequence[str], **extra: Any) -> dict[str, Any]:
    """The manifest line of a finished unit (its input as an absolute path); ``extra``: more fields."""
    return {"input": os.path.abspath(unit.path), "name": unit.name, "kind": unit.kind, "status": status,
            "frames": frames, "expected_frames": unit.frames, "hands": hands, "seconds": round(seconds, 3),
            "error": error, "files": list(files), **extra}


# ---------------------------------------------------------------------------------------------------- frames

@dataclass
class Decoded:
    """What reading a unit found: frames decoded, and the images skipped, each as "PATH: why"."""

    frames: int = 0
    unreadable: list[str] = field(default_factory=list)


def read_frames(unit: Unit, decoded: Decoded, max_pixels: int | None = None
                ) -> Iterator[tuple[int, float | None, str, np.ndarray]]:
    """``(index, time_s, source, img_bgr)`` of each readable frame or image of ``unit``; ``decoded`` counts them
    and lists the images skipped (unreadable, or refused by ``hamer.images.read_image`` with ``max_pixels``). A
    video that cannot be opened raises InputError."""
    if unit.kind != "video":
        for index, path in enumerate(unit.images):
            try:
                img = read_image(path, max_pixels)
            except ImageError as exc:
                decoded.unreadable.append(str(exc))
                continue
            except OSError as exc:
                decoded.unreadable.append(f"{path}: {exc.strerror or exc}")
                continue
            decoded.frames += 1
            yield index, None, path, img
        return
    with opencv_path(unit.path) as name:
        cap = cv2.VideoCapture(name)
        try:
            if not cap.isOpened():
                raise InputError("not an image or a video that OpenCV can read")
            while True:
                ok, img = cap.read()
                if not ok:
                    return
                index = decoded.frames
                decoded.frames += 1
                yield index, index / unit.fps, unit.path, img
        finally:
            cap.release()


def outcome(unit: Unit, decoded: Decoded) -> tuple[str, str | None]:
    """(status, error) of a unit read whole: truncated, failed (nothing read) or done."""
    if unit.kind == "video":
        if decoded.frames == 0:
            return "failed", "not a video that OpenCV can decode (no frame)"
        if unit.frames and decoded.frames < unit.frames:
            return "truncated", (f"truncated: {decoded.frames} of the {unit.frames} frames the file announces "
                                 "could be decoded; those were written")
        return "done", None
    if decoded.unreadable:
        status = "failed" if decoded.frames == 0 else "truncated"
        return status, f"cannot read {len(decoded.unreadable)} image(s), skipped: {'; '.join(decoded.unreadable)}"
    return "done", None


class UnitWriter:
    """The outputs of one unit, whole or not at all: its ``options.formats`` (``hamer.formats.open_writers``:
    ``<name>.jsonl``, ``.npz``...) and with ``options.overlay`` the hands drawn (``.overlay.jpg``, ``.overlay/``,
    ``.overlay.mp4`` or ``.overlay.webm``: :func:`hamer.video.browser_codec`) in ``options.overlay_style``.
    ``faces``: the MANO triangles (for obj, rerun and mesh overlays).

    The one place a unit's files are opened: a context manager with :meth:`add`; they appear when the block
    completes, none when it raises (an overlay folder keeps the whole images written so far).
    """

    def __init__(self, unit: Unit, out: Path, options: Options, faces: np.ndarray | None = None) -> None:
        self.unit, self.out, self.overlay = unit, Path(out), options.overlay
        self.options, self.faces = options, faces
        self.files = unit.files(options.formats, options.overlay)
        self._style = "boxes" if options.bbox_only else options.overlay_style
        if options.overlay and self._style == "mesh" and faces is None:
            log.warning("%s: the model has no MANO triangles (an ONNX file exported without them): the overlay "
                        "draws skeletons", unit.path)
            self._style = "skeleton"

    @property
    def frames(self) -> int:
        return self._results.frames

    @property
    def hands(self) -> int:
        return self._results.hands

    def __enter__(self) -> UnitWriter:
        from .formats import UnitInfo, open_writers

        for name in self.files:
            refuse_link(self.out / name, "output", OSError)
        o = self.options
        info = UnitInfo(self.out, self.unit.name, self.unit.fps if self.unit.kind == "video" else None, self.faces,
                        pose_base(o.pose_base, self.unit), o.vertices)
        self._stack = ExitStack()
        self._results = self._stack.enter_context(open_writers(o.formats, info))
        self._video = None
        if self.overlay and self.unit.kind == "video":
            self._video = self._stack.enter_context(VideoFileWriter(self.out / self.files[-1], self.unit.fps))
        self._used: set[str] = set()
        return self

    def add(self, frame: Frame, img_bgr: np.ndarray) -> None:
        from .overlay import draw

        self._results.add(frame, img_bgr)
        if not self.overlay:
            return
        drawn = draw(img_bgr, frame.result, self._style, faces=self.faces,
                     side_view=self.options.side_view and self._style == "mesh")
        if self._video is not None:
            self._video.write(drawn)
        elif self.unit.kind == "image":
            write_image(self.out / self.files[-1], drawn)
        else:
            folder = self.out / self.files[-1]
            folder.mkdir(exist_ok=True)
            stem, n = Path(frame.source).stem, 1
            name = stem
            while name in self._used:
                n += 1
                name = f"{stem}-{n}"
            self._used.add(name)
            write_image(folder / f"{name}.jpg", drawn)

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------- the run

def run_corpus(inputs: Iterable[str], out: str | os.PathLike, options: Options | None = None, *,
               resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
               stats: Any = None, skipped: Callable[[Unit, str], None] | None = None) -> list[dict[str, Any]]:
    """Run HaMeR on a corpus: the manifest records of the units run now (inputs that cannot be read included,
    as ``failed``), in the order they finished. What is run, skipped or refused: :mod:`hamer.plan`.

    Args:
        inputs: images, folders (their images as one unit, and each of their videos) and videos.
        out: the output folder (created); ``out/manifest.jsonl`` collects the records of every run into it. The
            run holds it (``out/.hamer-lock``) and first removes what dead runs left (``.hamer-tmp-*``).
        options: model, video and engine options (default :class:`Options`).
        resume: also retry the units that failed or were truncated.
        overwrite: run every unit again, replacing earlier results as the new ones are written.
        progress: told of written frames and finished units.
        stats: a ``hamer.engines.local.StageStats`` to accumulate per-stage seconds into.
        skipped: told of each unit not run now, with why.
    Raises:
        hamer.manifest.RunError: the folder is in use by another run (FolderBusy), earlier results would be
            replaced (OverwriteError), a link is in the way, or the manifest cannot be written (ManifestError).
        ModelError: the network or MediaPipe cannot be set up.
    """
    options = options or Options()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if options.engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {options.engine!r}")
    out = Path(out)
    units, problems = collect_units(inputs)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    try:
        with FolderLock(out):
            return _run_locked(units, problems, out, options, resume, overwrite, progress, stats, skipped)
    finally:
        if created and not any(out.iterdir()):
            out.rmdir()  # nothing was written (refused, or the model could not load)


def _run_locked(units: list[Unit], problems: list[tuple[str, str]], out: Path, options: Options, resume: bool,
                overwrite: bool, progress: Progress | None, stats: Any, skipped: Callable[[Unit, str], None] | None
                ) -> list[dict[str, Any]]:
    """The run, holding the output folder's lock."""
    manifest = Manifest(out)
    todo = plan(units, out, options, manifest.load(), resume, overwrite)
    for unit, why in todo.skipped:
        log.info("%s: %s", unit.path, why)
        if skipped is not None:
            skipped(unit, why)
    if options.engine == "ray" and (todo.todo or todo.suspects):
        from .engines.ray import check_model_files

        check_model_files(options)
    clean_temp_files(out)
    if progress is not None:
        every = todo.suspects + todo.todo
        frames = None if any(u.frames == 0 for u in every) else sum(u.frames for u in every)
        progress.start(len(every) + len(problems), frames)
    extra = {**this_run(), "options": fingerprint(options)}
    stat = {os.path.abspath(u.path): input_stat(u) for u in units}
    records: list[dict[str, Any]] = []

    in_flight: dict[str, Unit] = {}

    def started(unit: Unit, status: str = "started") -> None:
        in_flight[os.path.abspath(unit.path)] = unit
        manifest.append({"input": os.path.abspath(unit.path), "name": unit.name, "kind": unit.kind,
                         "status": status, **this_run(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def finished(rec: dict[str, Any]) -> None:
        in_flight.pop(rec["input"], None)
        rec = {**rec, **extra, "stat": stat.get(rec["input"])}
        manifest.append(rec)
        records.append(rec)
        if progress is not None:
            progress.unit(rec)

    try:
        for arg, why in problems:
            finished({"input": os.path.abspath(arg), "name": None, "kind": None, "status": "failed", "frames": 0,
                      "expected_frames": 0, "hands": 0, "seconds": 0.0, "error": why, "files": []})
        if todo.suspects:  # first, and before the network loads here: each in a process of its own
            from .engines.isolated import run_isolated

            for unit in todo.suspects:
                finished(run_isolated(unit, out, options, progress))
        if todo.todo and options.engine == "local":
            from .engines.local import LocalEngine

            LocalEngine(options, stats=stats).run(todo.todo, out, finished, progress, started=started)
        elif todo.todo:
            from .engines.ray import run_ray

            run_ray(todo.todo, out, options, finished, progress, stats)
    except (KeyboardInterrupt, SystemExit):  # stopped by the user: the units in flight were not at fault
        for unit in list(in_flight.values()):
            started(unit, "interrupted")
        raise
    finally:
        manifest.close()
    clean_temp_files(out)
    return records
