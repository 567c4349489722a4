"""A corpus run: many inputs, one unit of work each, a manifest of finished units, resumable after any kill.

A *unit* is one video, one image, or one folder of images. Each unit's outputs (``<name>.jsonl``, ``<name>.npz``
and with overlays ``<name>.overlay.*``) are written whole through atomic renames (:func:`hamer.outputs.atomic_path`);
``OUT/manifest.jsonl`` gets one line per finished unit, flushed and fsynced as it is written::

    {"input": "/data/a.mp4", "name": "a", "kind": "video", "status": "done" | "failed" | "truncated",
     "frames": 300, "expected_frames": 300, "hands": 512, "seconds": 12.3, "error": null,
     "files": ["a.jsonl", "a.npz"]}

``truncated``: fewer frames decoded than the container announces (``CAP_PROP_FRAME_COUNT``); the decoded frames
are written. ``failed``: nothing usable (unreadable input, an error while running it); its files are not written.
:func:`run_corpus` is the Python entry point; ``hamer run`` calls it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import cv2
import numpy as np

from .images import IMAGE_SUFFIXES, opencv_path, read_image
from .outputs import TEMP_PREFIX, Frame, VideoFileWriter, write_image

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
ENGINES = ("local", "ray")
# Files of a folder taken as videos (a file given by path is probed whatever its suffix).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".3gp", ".ogv"})
DEFAULT_FPS = 30.0
# The temporary files of hamer.outputs.atomic_path: ".hamer-tmp-<pid>-<n><suffix>".
TEMP_FILE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-\d+(\.[A-Za-z0-9]+)?$")


class InputError(Exception):
    """An input that cannot be read."""


class ModelError(Exception):
    """HaMeR or MediaPipe cannot be set up: nothing can run. ``data_problem``: the data folder is at fault."""

    def __init__(self, message: str, data_problem: bool = False) -> None:
        super().__init__(message)
        self.data_problem = data_problem


class OverwriteError(Exception):
    """The run would overwrite the results of an earlier run in the output folder."""


@dataclass
class Unit:
    """One unit of work. kind: "image", "folder" (its images, sorted by name) or "video"; ``name``: the stem of
    its output files in the output folder; ``frames``: frames or images announced (0 if unknown)."""

    path: str
    kind: str
    name: str = ""
    images: list[str] = field(default_factory=list)
    frames: int = 0
    fps: float = DEFAULT_FPS

    def files(self, formats: Sequence[str], overlay: bool) -> list[str]:
        """The names of the files (and folders) it writes in the output folder."""
        from .formats import UnitInfo, output_paths

        names = [p.name for p in output_paths(formats, UnitInfo(Path("."), self.name))]
        if overlay:
            names.append(self.name + {"image": ".overlay.jpg", "folder": ".overlay", "video": ".overlay.mp4"}[
                self.kind])
        return names


@dataclass
class Options:
    """The options of a corpus run (the ``hamer run`` flags, docs/CLI.md)."""

    data: str | None = None
    checkpoint: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    onnx: str | None = None
    precision: str = "fp32"
    rescale_factor: float = 2.0
    max_hands: int = 2
    bbox_only: bool = False
    overlay: bool = False
    label_hold: int = 5
    smooth: bool = False
    min_cutoff: float = 1.0
    beta: float = 10.0
    formats: tuple[str, ...] = ("jsonl", "npz")
    vertices: bool = False
    pose_base: str | None = None
    camera: Any = None  # a hamer.results.CameraSpec: Camera, FieldOfView, or a callable of (W, H)
    engine: str = "local"
    batch_size: int = 8
    detect_workers: int = 2
    workers: int = 1
    ray_address: str | None = None
    gpus_per_worker: float | None = None  # Ray: GPUs per worker (None: 1 with a CUDA device, 0 otherwise)


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


def assign_names(units: Sequence[Unit], known: dict[str, dict[str, Any]]) -> None:
    """Give each unit a unique output name: the one the manifest (``known``, by absolute input path) has for its
    input, else its file (folder) name, with ``-2``, ``-3``... when taken."""
    paths = {os.path.abspath(u.path) for u in units}
    used = {rec["name"] for path, rec in known.items() if path not in paths}
    for unit in units:
        rec = known.get(os.path.abspath(unit.path))
        if rec is not None and rec["name"]:
            unit.name = rec["name"]
            used.add(unit.name)
    for unit in units:
        if not unit.name:
            stem = Path(unit.path).resolve().name if unit.kind == "folder" else Path(unit.path).stem
            name, n = stem, 1
            while name in used:
                n += 1
                name = f"{stem}-{n}"
            unit.name = name
            used.add(name)


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


# ---------------------------------------------------------------------------------------------------- manifest

class Manifest:
    """``OUT/manifest.jsonl``: one JSON line per finished unit, each flushed and fsynced as it is written."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / MANIFEST
        self._file: IO[str] | None = None

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of each input; a torn last line (a kill while writing) is ignored."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                records[record["input"]] = record
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is not a record (a run killed while writing it?); ignored", self.path,
                            number)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, on disk when this returns."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run)
            if self._file.tell() > 0:  # a torn last line of a killed run: end it
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._file.write("\n")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def clean_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files a killed run left in ``out`` (and its overlay folders); returns them.

    One run at a time per output folder: a run in progress has temporary files too."""
    removed = []
    for folder in [out, *(p for p in out.glob("*.overlay") if p.is_dir())]:
        for path in folder.iterdir():
            if TEMP_FILE.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run in %s", len(removed), out)
    return removed


def plan(units: Sequence[Unit], out: Path, options: Options, resume: bool, overwrite: bool
         ) -> tuple[list[Unit], list[Unit]]:
    """(units to run, units already done) in ``out``; OverwriteError when earlier results would be overwritten
    without ``resume`` or ``overwrite``."""
    manifest = Manifest(out)
    known = {} if overwrite else manifest.load()
    assign_names(units, known)
    if overwrite:
        return list(units), []
    if resume:
        done = [u for u in units if _is_done(known.get(os.path.abspath(u.path)), out)]
        skipped = {id(u) for u in done}
        return [u for u in units if id(u) not in skipped], done
    existing = [f for u in units for f in u.files(options.formats, options.overlay) if (out / f).exists()]
    if manifest.path.exists() or existing:
        what = f"{manifest.path} exists" if manifest.path.exists() else f"{out / existing[0]} exists"
        raise OverwriteError(f"{what}: earlier results would be overwritten; pass --resume to skip the inputs done "
                             "and run the rest, or --overwrite to run everything again")
    return list(units), []


def _is_done(rec: dict[str, Any] | None, out: Path) -> bool:
    return rec is not None and rec["status"] == "done" and all((out / f).exists() for f in rec["files"])


def record(unit: Unit, status: str, frames: int, hands: int, seconds: float, error: str | None,
           files: Sequence[str]) -> dict[str, Any]:
    """The manifest line of a finished unit (its input as an absolute path)."""
    return {"input": os.path.abspath(unit.path), "name": unit.name, "kind": unit.kind, "status": status,
            "frames": frames, "expected_frames": unit.frames, "hands": hands, "seconds": round(seconds, 3), "error": error,
            "files": list(files)}


# ---------------------------------------------------------------------------------------------------- frames

@dataclass
class Decoded:
    """What reading a unit found: frames decoded, and for a video whether it ended early."""

    frames: int = 0
    unreadable: list[str] = field(default_factory=list)


def read_frames(unit: Unit, decoded: Decoded) -> Iterator[tuple[int, float | None, str, np.ndarray]]:
    """``(index, time_s, source, img_bgr)`` of each readable frame or image of ``unit``; ``decoded`` counts them
    and lists unreadable images. A video that cannot be opened raises InputError."""
    if unit.kind != "video":
        for index, path in enumerate(unit.images):
            try:
                img = read_image(path)
            except OSError as exc:
                img = None
                log.debug("%s: %s", path, exc)
            if img is None:
                decoded.unreadable.append(path)
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
        return status, f"cannot read {len(decoded.unreadable)} image(s), skipped: {', '.join(decoded.unreadable)}"
    return "done", None


class UnitWriter:
    """The outputs of one unit, whole or not at all: its ``options.formats`` (``hamer.formats.open_writers``:
    ``<name>.jsonl``, ``.npz``...) and with ``options.overlay`` the hands drawn (``.overlay.jpg``, ``.overlay/``,
    ``.overlay.mp4``). ``faces``: the MANO triangles (for obj).

    The one place a unit's files are opened: a context manager with :meth:`add`; they appear when the block
    completes, none when it raises (an overlay folder keeps the whole images written so far).
    """

    def __init__(self, unit: Unit, out: Path, options: Options, faces: np.ndarray | None = None) -> None:
        self.unit, self.out, self.overlay = unit, Path(out), options.overlay
        self.options, self.faces = options, faces
        self.files = unit.files(options.formats, options.overlay)

    @property
    def frames(self) -> int:
        return self._results.frames

    @property
    def hands(self) -> int:
        return self._results.hands

    def __enter__(self) -> UnitWriter:
        from .formats import UnitInfo, open_writers

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
        from .overlay import draw_hands

        self._results.add(frame)
        if not self.overlay:
            return
        drawn = draw_hands(img_bgr, frame.result.hands)
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
               stats: Any = None) -> list[dict[str, Any]]:
    """Run HaMeR on a corpus: the manifest records of the units run now (inputs that cannot be read included,
    as ``failed``), in the order they finished; units a resumed run skips are not repeated.

    Args:
        inputs: images, folders (their images as one unit, and each of their videos) and videos.
        out: the output folder (created); ``out/manifest.jsonl`` collects the records of every run into it.
        options: model, video and engine options (default :class:`Options`).
        resume: skip the units the manifest has as done whose files exist; run the rest.
        overwrite: run everything again, replacing earlier results (and the manifest).
        progress: told of written frames and finished units.
        stats: a ``hamer.engines.local.StageStats`` to accumulate per-stage seconds into.
    Raises:
        OverwriteError: earlier results exist and neither ``resume`` nor ``overwrite`` was given.
        ModelError: the network or MediaPipe cannot be set up.
    """
    options = options or Options()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if options.engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {options.engine!r}")
    out = Path(out)
    units, problems = collect_units(inputs)
    todo, done = plan(units, out, options, resume, overwrite)
    if done:
        log.info("resuming: %d unit(s) done earlier are skipped", len(done))
    engine = None
    if todo and options.engine == "local":
        from .engines.local import LocalEngine

        engine = LocalEngine(options, stats=stats)  # the network loads before anything is written
    elif todo:
        from .engines.ray import check_model_files

        check_model_files(options)
    out.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out)
    if progress is not None:
        frames = None if any(u.frames == 0 for u in todo) else sum(u.frames for u in todo)
        progress.start(len(todo) + len(problems), frames)
    manifest = Manifest(out)
    if overwrite and manifest.path.exists():
        manifest.path.unlink()
    records: list[dict[str, Any]] = []

    def finished(rec: dict[str, Any]) -> None:
        manifest.append(rec)
        records.append(rec)
        if progress is not None:
            progress.unit(rec)

    try:
        for arg, why in problems:
            finished({"input": os.path.abspath(arg), "name": None, "kind": None, "status": "failed", "frames": 0,
                      "expected_frames": 0, "hands": 0, "seconds": 0.0, "error": why, "files": []})
        if engine is not None:
            engine.run(todo, out, finished, progress)
        elif todo:
            from .engines.ray import run_ray

            run_ray(todo, out, options, finished, progress, stats)
    finally:
        manifest.close()
    clean_temp_files(out)
    return records
