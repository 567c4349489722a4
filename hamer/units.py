"""The units of a corpus run and the options they run with: what a unit is, the options that decide its outputs.

A *unit* is one video, one image, one folder of images, or one segment of a long video (:class:`Unit`,
:mod:`hamer.segments`; its manifest line: :func:`record`);
:class:`Options` are the ``hamer run`` flags. :func:`fingerprint` is the part of the options that changes a unit's
outputs, as recorded in the manifest (``"options"``): a unit done with other options is not taken as done. The
engine, batch size and worker counts are left out: they change results only by float rounding. The model's own
options, checked once: :class:`hamer.model_options.ModelOptions` (:attr:`Options.model`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detectors import DetectorFactory

from .input_cache import DEFAULT_CACHE_BYTES
from .model_options import ModelOptions
from .storage import is_url, key, redact
from .storage import stat as url_stat

DEFAULT_FPS = 30.0
# Files of a folder (objects of a prefix) taken as videos (a file given by path is probed whatever its suffix).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".3gp", ".ogv"})

# fingerprint key -> the flags that set it (the message naming what differs)
FINGERPRINT_FLAGS = {
    "formats": "--formats", "overlay": "--overlay", "bbox_only": "--bbox-only", "vertices": "--vertices",
    "camera": "--intrinsics/--fov-deg", "smooth": "--smooth", "min_cutoff": "--min-cutoff", "beta": "--beta",
    "label_hold": "--label-hold", "rescale_factor": "--rescale-factor", "max_hands": "--max-hands",
    "backend": "--backend", "precision": "--precision", "model": "--data/--checkpoint/--onnx",
    "pose_base": "--pose-base", "overlay_style": "--overlay STYLE", "side_view": "--side-view",
    "detector": "--boxes (Options.detector)",
}


@dataclass
class Unit:
    """One unit of work. kind: "image", "folder" (its images, sorted by name) or "video"; ``name``: the stem of
    its output files in the output folder; ``frames``: frames or images announced (0 if unknown); ``segment``: a
    video's frames ``[start, end)`` when the unit is one segment of it (:mod:`hamer.segments`), else None."""

    path: str
    kind: str
    name: str = ""
    images: list[str] = field(default_factory=list)
    frames: int = 0
    fps: float = DEFAULT_FPS
    segment: tuple[int, int] | None = None

    @property
    def shown(self) -> str:
        """``path`` as messages and the manifest show it: a URL's credentials and query hidden
        (:func:`hamer.storage.redact`)."""
        return redact(self.path)

    def files(self, formats: Sequence[str], overlay: bool) -> list[str]:
        """The names of the files (and folders) it writes in the output folder."""
        from .formats import UnitInfo, output_paths

        names = [p.name for p in output_paths(formats, UnitInfo(Path("."), self.name))]
        if overlay:
            from .video import VIDEO_CODECS, browser_codec

            video = ".overlay" + VIDEO_CODECS[browser_codec()]
            names.append(self.name + {"image": ".overlay.jpg", "folder": ".overlay", "video": video}[self.kind])
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
    overlay_style: str = "mesh"  # hamer.overlay.STYLES; "boxes" whatever is asked with bbox_only
    side_view: bool = False
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
    max_image_pixels: int | None = None  # None: hamer.images.MAX_IMAGE_PIXELS
    # videos of more frames are split into segments of this many (hamer.segments; None: its default, 0: never)
    segment_frames: int | None = None
    segment_warmup: int | None = None  # frames run and dropped before each segment (None: hamer.segments' default)
    cache_size: int = DEFAULT_CACHE_BYTES  # bytes of the local cache of videos read from URLs (hamer.input_cache)
    # makes the run's hand detectors (hamer.detectors.DetectorFactory: mode "IMAGE" or "VIDEO" -> a Detector, made
    # and closed by the engine; picklable for Ray: a module-level class's instance or a module-level function, e.g.
    # hamer.boxfile.BoxFileDetectors(path), hamer.detection.MediaPipeDetectors(options)); None: MediaPipe's bundled
    # models with max_hands
    detector: DetectorFactory | None = None

    @property
    def model(self) -> ModelOptions:
        """The model's options among these (checked by :meth:`ModelOptions.check`)."""
        return ModelOptions(device=self.device, backend=self.backend, precision=self.precision, data=self.data,
                            checkpoint=self.checkpoint, onnx=self.onnx, rescale_factor=self.rescale_factor,
                            camera=self.camera)


def fingerprint(options: Options) -> dict[str, Any]:
    """The options that change a unit's outputs, as JSON values: the model by its file paths (the checkpoint,
    resolved; the ONNX file if given; None with ``bbox_only``), a camera by its values (a function by its name), a
    detector factory by its ``repr`` if a dataclass (its fields), else by its name (None: MediaPipe's default)."""
    o = options
    model = None if o.bbox_only else o.model.fingerprint()
    camera = o.camera
    if dataclasses.is_dataclass(camera):
        camera = {"type": type(camera).__name__, **dataclasses.asdict(camera)}
    elif camera is not None:
        camera = getattr(camera, "__qualname__", type(camera).__qualname__)
    return {"formats": sorted(o.formats), "overlay": o.overlay, "bbox_only": o.bbox_only, "vertices": o.vertices,
            "camera": camera, "smooth": o.smooth, "min_cutoff": o.min_cutoff, "beta": o.beta,
            "label_hold": o.label_hold, "rescale_factor": o.rescale_factor, "max_hands": o.max_hands,
            "backend": o.backend, "precision": o.precision, "model": model,
            "pose_base": None if o.pose_base is None else os.path.abspath(o.pose_base),
            "overlay_style": o.overlay_style if o.overlay else None, "side_view": o.overlay and o.side_view,
            "detector": _detector_name(o.detector)}


def _detector_name(factory: Any) -> str | None:
    """A detector factory as a fingerprint value: a dataclass by its ``repr`` (its fields), else by its name."""
    if factory is None:
        return None
    if dataclasses.is_dataclass(factory):
        return repr(factory)
    return getattr(factory, "__qualname__", type(factory).__qualname__)


def differences(recorded: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The flags whose values differ between a recorded fingerprint and ``now`` (none for a record without one:
    a manifest written before fingerprints)."""
    if recorded is None:
        return []
    return [FINGERPRINT_FLAGS.get(key, key) for key in now if recorded.get(key) != now[key]]


def input_stat(unit: Unit) -> list[int] | None:
    """``[size, mtime_ns]`` of a unit's input (a folder: its images' total size and latest mtime, the folder's
    own included; a URL's: :func:`hamer.storage.stat`): the record's ``"stat"``, telling whether the input changed
    since. None if it cannot be read."""
    folder = unit.kind == "folder"
    if is_url(unit.path):
        stats = [url_stat(p) for p in (unit.images if folder else [unit.path])]
        if not stats or None in stats:
            return None
        return [sum(s[0] for s in stats), max(s[1] for s in stats)]
    try:
        stats = [os.stat(p) for p in ([unit.path, *unit.images] if folder else [unit.path])]
    except OSError:
        return None
    size = sum(s.st_size for s in stats[1:]) if folder else stats[0].st_size
    return [size, max(s.st_mtime_ns for s in stats)]


def record(unit: Unit, status: str, frames: int, hands: int, seconds: float, error: str | None,
           files: Sequence[str], **extra: Any) -> dict[str, Any]:
    """The manifest line of a finished unit (its input as an absolute path, a URL redacted:
    :func:`hamer.storage.key`; a segment's ``"segment": [start, end]`` and its frames as ``expected_frames``);
    ``extra``: more fields."""
    segment = {} if unit.segment is None else {"segment": list(unit.segment)}
    expected = unit.frames if unit.segment is None else unit.segment[1] - unit.segment[0]
    return {"input": key(unit.path), "name": unit.name, "kind": unit.kind, **segment, "status": status,
            "frames": frames, "expected_frames": expected, "hands": hands, "seconds": round(seconds, 3),
            "error": error, "files": list(files), **extra}
