"""The part file of one video segment: its frames, as exactly as the writers of the joined files need them.

A segment (:attr:`hamer.units.Unit.segment`, frames ``[start, end)``) writes one NumPy ``.npz`` (no pickled
objects) in ``OUT/.hamer-segments/NAME/`` (:func:`part_path`), whole or not at all (a temporary file renamed into
place): per frame its index, time, image size and camera; per hand every field the output formats read (labels,
score, detector, track id, box, joints, camera translation, MANO parameters, vertices when some output draws or
stores them), each array in its own dtype, so the joined files equal an unsegmented run's given equal hands. It also
keeps the hands the warm-up saw (frames before ``start``: their track ids, labels and boxes) for the renumbering of
track ids at the join (:mod:`hamer.segments`), and the MANO triangles for the outputs that draw meshes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_path, naming
from .manifest import SEGMENT_PARTS as PARTS
from .outputs import Frame
from .results import Camera, FrameResult, Hand, ManoParams
from .unit_writer import UnitWriter
from .units import Options, Unit

# optional per-hand arrays, each stored for the hands that have it (a mask says which)
_ARRAYS = ("keypoints_3d", "keypoints_2d", "cam_t", "vertices")
_MANO = ("global_orient", "hand_pose", "betas")
Warmup = list[tuple[int, tuple[Hand, ...]]]  # (frame index, tracked hands) of the warm-up frames


def part_folder(out: Path, name: str) -> Path:
    """The folder of the part files of the video named ``name`` in ``out``."""
    return Path(out) / PARTS / name


def part_name(unit: Unit) -> str:
    """The part file of a segment unit, relative to the output folder (or URL)."""
    start, end = unit.segment
    return f"{PARTS}/{unit.name}/{start:012d}-{end:012d}.npz"


def part_path(out: Path, unit: Unit) -> Path:
    """The part file of a segment unit in the output folder ``out``."""
    return Path(out) / part_name(unit)


def needs_vertices(options: Options) -> bool:
    """Whether an output of ``options`` uses the hands' vertices (the NPZ's, meshes drawn or exported)."""
    mesh_overlay = options.overlay and not options.bbox_only and options.overlay_style == "mesh"
    return options.vertices or mesh_overlay or "obj" in options.formats or "rerun" in options.formats


class PartWriter:
    """The part file of one segment, as :class:`hamer.unit_writer.UnitWriter` writes a unit's files: a context
    manager with ``add(frame, img)``; ``warmup``: the warm-up's tracked hands (filled before the block ends)."""

    def __init__(self, unit: Unit, out: Path, options: Options, faces: np.ndarray | None, warmup: Warmup) -> None:
        self.unit, self.out, self.faces, self.warmup = unit, Path(out), faces, warmup
        self.path = part_path(out, unit)
        self.files = [str(self.path.relative_to(self.out))]
        self.vertices = needs_vertices(options)
        self.frames = 0
        self.hands = 0
        self._frames: list[dict[str, Any]] = []
        self._hands: list[dict[str, Any]] = []

    def __enter__(self) -> PartWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def add(self, frame: Frame, img_bgr: np.ndarray | None = None) -> None:
        result = frame.result
        camera = result.camera
        self._frames.append({"index": frame.index, "time_s": np.nan if frame.time_s is None else frame.time_s,
                             "image_size": result.image_size,
                             "camera": [np.nan] * 4 if camera is None else camera.as_list()})
        for hand in result.hands:
            row = {"frame": self.frames, "label": hand.label, "detected_label": hand.detected_label,
                   "detector": hand.detector, "score": hand.score, "track_id": hand.track_id, "box": hand.box}
            for key in _ARRAYS:
                value = getattr(hand, key)
                row[key] = None if key == "vertices" and not self.vertices else value
            for key in _MANO:
                row[key] = None if hand.mano is None else getattr(hand.mano, key)
            self._hands.append(row)
        self.frames += 1
        self.hands += len(result.hands)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            return
        arrays = _frame_arrays(self._frames)
        arrays.update(_hand_arrays(self._hands, ""))
        warm = [{"frame": index, "label": h.label, "track_id": h.track_id, "box": h.box}
                for index, hands in self.warmup for h in hands]
        arrays.update(_hand_arrays(warm, "warmup_"))
        if self.faces is not None:
            arrays["faces"] = np.asarray(self.faces)
        with naming(self.path), atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def open_writer(unit: Unit, out: Path, options: Options, faces: np.ndarray | None, warmup: Warmup
                ) -> UnitWriter | PartWriter:
    """The writer of a unit's files (:class:`UnitWriter`), or of a segment's part file (``warmup``: its warm-up's
    tracked hands, filled before the writer's block ends)."""
    if unit.segment is not None:
        return PartWriter(unit, out, options, faces, warmup)
    return UnitWriter(unit, out, options, faces)


def _frame_arrays(frames: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {"frame_index": np.array([f["index"] for f in frames], dtype=np.int64),
            "frame_time_s": np.array([f["time_s"] for f in frames], dtype=np.float64),
            "frame_image_size": np.array([f["image_size"] for f in frames], dtype=np.int64).reshape(-1, 2),
            "frame_camera": np.array([f["camera"] for f in frames], dtype=np.float64).reshape(-1, 4)}


def _hand_arrays(rows: list[dict[str, Any]], prefix: str) -> dict[str, np.ndarray]:
    """Each field of ``rows`` as one array (``prefix`` + field): scalars and strings stacked; an array field that
    some rows lack (None) as the stack of those that have it and a ``has_`` mask."""
    out: dict[str, np.ndarray] = {}
    keys = rows[0].keys() if rows else ("frame", "label", "track_id", "box")
    for key in keys:
        values = [r[key] for r in rows]
        if key in ("label", "detected_label", "detector"):
            out[prefix + key] = np.array(values, dtype=str)
        elif key in ("frame", "track_id"):
            out[prefix + key] = np.array(values, dtype=np.int64)
        elif key == "score":
            out[prefix + key] = np.array(values, dtype=np.float64)
        else:
            present = [v for v in values if v is not None]
            out[f"{prefix}has_{key}"] = np.array([v is not None for v in values], dtype=bool)
            if present:
                out[prefix + key] = np.stack([np.asarray(v) for v in present])
    return out


class Part:
    """A part file read back (no pickled objects): its frames (:meth:`frames`), the warm-up's hands
    (:attr:`warmup`: frame index -> [(track_id, label, box)]) and the MANO triangles (None if not stored)."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self._arrays = dict(npz)
        a = self._arrays
        self.faces: np.ndarray | None = a.get("faces")
        self.warmup: dict[int, list[tuple[int, str, np.ndarray]]] = {}
        boxes = _optional(a, "warmup_box", len(a.get("warmup_frame", ())))
        for index, track, label, box in zip(a.get("warmup_frame", ()), a.get("warmup_track_id", ()),
                                            a.get("warmup_label", ()), boxes, strict=True):
            self.warmup.setdefault(int(index), []).append((int(track), str(label), box))

    def __len__(self) -> int:
        return len(self._arrays["frame_index"])

    def track_ids(self) -> set[int]:
        """The track ids of the segment's hands (its own numbering, from 0)."""
        return {int(t) for t in self._arrays.get("track_id", ()) if t >= 0}

    def frames(self, source: str, track_ids: dict[int, int]) -> list[Frame]:
        """The segment's frames, from ``source``, their hands' track ids renumbered by ``track_ids`` (local ->
        joined; ids not in it are kept)."""
        a = self._arrays
        count = len(a.get("frame", ()))
        columns = {key: _optional(a, key, count) for key in (*_ARRAYS, *_MANO, "box")}
        hands: list[list[Hand]] = [[] for _ in range(len(self))]
        for i in range(count):
            mano = None
            if columns["betas"][i] is not None:
                mano = ManoParams(*(columns[key][i] for key in _MANO))
            track = int(a["track_id"][i])
            hands[int(a["frame"][i])].append(Hand(
                label=str(a["label"][i]), box=columns["box"][i], score=float(a["score"][i]),
                detector=str(a["detector"][i]), detected_label=str(a["detected_label"][i]),
                track_id=track_ids.get(track, track), keypoints_3d=columns["keypoints_3d"][i],
                keypoints_2d=columns["keypoints_2d"][i], cam_t=columns["cam_t"][i], vertices=columns["vertices"][i],
                mano=mano))
        frames = []
        for row, index in enumerate(a["frame_index"]):
            camera = a["frame_camera"][row]
            time_s = float(a["frame_time_s"][row])
            width, height = (int(v) for v in a["frame_image_size"][row])
            result = FrameResult(tuple(hands[row]), (width, height),
                                 None if np.isnan(camera).all() else Camera(*(float(v) for v in camera)))
            frames.append(Frame(source, int(index), None if np.isnan(time_s) else time_s, result))
        return frames


def _optional(arrays: dict[str, np.ndarray], key: str, count: int) -> list[np.ndarray | None]:
    """The ``count`` values of an optional array field: each row's array, or None where its mask says absent."""
    if key not in arrays and f"has_{key}" not in arrays and not key.startswith("warmup_"):
        return [None] * count
    mask_key = f"warmup_has_{key[7:]}" if key.startswith("warmup_") else f"has_{key}"
    mask = arrays.get(mask_key, np.zeros(count, dtype=bool))
    values = iter(arrays.get(key, ()))
    return [next(values) if present else None for present in mask]
