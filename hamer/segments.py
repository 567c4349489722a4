"""Video segments: a long video split into units of ``segment_frames`` frames, run by any worker, joined when the
last one ends into exactly the files an unsegmented run writes.

A video of more than ``Options.segment_frames`` frames (default :data:`DEFAULT_SEGMENT_FRAMES`: 5 minutes at 30 fps;
0: never split) as the container announces them becomes the units ``[0, N)``, ``[N, 2N)``, ... (``Unit.segment``).
Each segment starts ``Options.segment_warmup`` frames earlier (default :data:`DEFAULT_WARMUP`): those frames are
decoded, detected and tracked (MediaPipe's VIDEO mode, the label hold, the track ids; with ``smooth`` also the
network and the One Euro filters) and their outputs dropped, so that the segment starts in the state an unsegmented
run has there. Its frames go to a part file (:mod:`hamer.segment_parts`) in ``OUT/.hamer-segments/NAME/``.

The manifest gets a ``started`` and a finished line per segment (``"segment": [start, end]``, its ``files`` the part
file); the video's own lines stay as before. When the last segment of a video ends, :meth:`Segments.finished`
joins the parts in frame order through :class:`hamer.unit_writer.UnitWriter` (overlays and Rerun images decoded
again from the video), renumbering each segment's track ids by matching the hands of its warm-up to the same frames
already joined (by label and box overlap; new tracks numbered on in order of birth), and returns the video's record
(``done`` or ``truncated``, naming the joined files, ``"segments": K``); then the part files are removed. A failed
segment fails the video (its record names the segment and why) and keeps the other parts: ``--resume`` runs only
the segments not done. A run killed mid-video runs only the unfinished segments again.

*An output URL* (``--out s3://...``, :mod:`hamer.remote_out`): a segment's part file is written in the worker's
local staging folder and uploaded, as a unit's files are, to ``OUT/.hamer-segments/NAME/`` before the segment's
record; a part counts as there when the listing of the URL at the run's start has it. The join runs on the driver: it
downloads the video's parts into a local staging folder, joins them there, uploads the joined files, and only then
is the video's record written; then the part objects are removed. Videos from input URLs are segmented when their
frame count is in their container's header (:func:`hamer.remote_inputs.probe_frames`, at plan time, when the
run splits videos); the others are run whole (logged).
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .frames import Decoded, outcome, read_frames
from .manifest import DIED
from .outputs import Frame
from .segment_parts import PARTS, Part, part_folder, part_name, part_path
from .storage import filesystem, is_url, key, redact
from .tracking import box_iou
from .unit_writer import UnitWriter
from .units import Options, Unit, fingerprint, input_stat, record

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_FRAMES = 9000  # 5 min at 30 fps; a video of at most this many frames stays one unit
DEFAULT_WARMUP = 90  # frames before each segment run and dropped (3 s at 30 fps; benchmarks/segments.py: what it buys)
MATCH_IOU = 0.2  # a warm-up hand and a joined one of its label are the same track at this box overlap (the tracker's)


def segment_size(options: Options) -> int:
    """The segment length of a run in frames (0: videos are not split)."""
    return DEFAULT_SEGMENT_FRAMES if options.segment_frames is None else options.segment_frames


def warmup_frames(options: Options) -> int:
    """The warm-up of each segment in frames."""
    return DEFAULT_WARMUP if options.segment_warmup is None else options.segment_warmup


def bounds(frames: int, size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` segments of a video of ``frames`` frames; none when it is not split (``size`` 0, a
    video of at most ``size`` frames, or an unknown frame count)."""
    if size <= 0 or frames <= size:
        return []
    return [(start, min(start + size, frames)) for start in range(0, frames, size)]


@dataclass(eq=False)
class _Video:
    """A segmented video of this run: its segments, their latest records, those not ended yet in this run."""

    unit: Unit
    segments: list[tuple[int, int]]
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    pending: set[tuple[int, int]] = field(default_factory=set)


class Segments:
    """The segments of one run's long videos (see the module): :meth:`split` says which to run, :meth:`finished`
    takes their records and joins each video when its last segment ends.

    ``records``: the manifest's latest record of each segment (by (input, start, end)); ``overwrite`` runs every
    segment again; ``resume`` also retries truncated ones (failed and interrupted ones run again whenever their video
    runs). ``out``: the output folder, or URL; ``exists`` (a URL's): whether the URL held a name at the run's
    start (:func:`hamer.remote_out.existing`)."""

    def __init__(self, out: Path | str, options: Options, records: dict[tuple[str, int, int], dict[str, Any]],
                 resume: bool = False, overwrite: bool = False, exists: Callable[[str], bool] | None = None) -> None:
        if segment_size(options) < 0 or warmup_frames(options) < 0:
            raise ValueError(f"segment_frames and segment_warmup must be >= 0, got {options.segment_frames} and "
                             f"{options.segment_warmup}")
        self.out = out if is_url(str(out)) else Path(out)
        self.options, self.records, self.exists = options, records, exists
        self.resume, self.overwrite = resume, overwrite
        self.videos: dict[str, _Video] = {}
        self._now = fingerprint(options)

    def split(self, units: list[Unit]) -> tuple[list[Unit], list[Unit], list[Unit]]:
        """``(todo, suspects, ready)``: ``units`` with each long video replaced by its segments to run, the segments
        to run alone in a child process (an earlier run died running them: :mod:`hamer.plan`), and the videos whose
        segments were all done earlier (:meth:`join` them)."""
        todo: list[Unit] = []
        suspects: list[Unit] = []
        ready: list[Unit] = []
        size = segment_size(self.options)
        if size:
            unknown = [u for u in units if u.kind == "video" and u.frames == 0 and is_url(u.path)]
            if unknown:
                from .remote_inputs import probe_frames

                probe_frames(unknown)
        for unit in units:
            segments = bounds(unit.frames, size) if unit.kind == "video" else []
            if not segments:
                todo.append(unit)
                continue
            video = self.videos[key(unit.path)] = _Video(unit, segments)
            stat = input_stat(unit)
            for segment in segments:
                rec = self.records.get((key(unit.path), *segment))
                part = replace(unit, segment=segment)
                if rec is not None and not self.overwrite and self._reusable(rec, part, stat):
                    video.records[segment] = rec
                    continue
                video.pending.add(segment)
                status = None if rec is None or self.overwrite else rec["status"]
                died = status == "failed" and str(rec.get("error")).startswith(DIED)
                (suspects if status == "started" or died else todo).append(part)
            if not video.pending:
                ready.append(unit)
        return todo, suspects, ready

    def _reusable(self, rec: dict[str, Any], segment: Unit, stat: list[int] | None) -> bool:
        """Whether a segment's earlier record stands: done (truncated unless resuming) with these options, its input
        unchanged, its part file there."""
        status_ok = rec["status"] == "done" or (rec["status"] == "truncated" and not self.resume)
        return (status_ok and rec.get("options") == self._now and rec.get("stat") == stat
                and self._has(part_name(segment)))

    def _has(self, name: str) -> bool:
        """Whether the output folder (a URL: at the run's start) holds ``name``."""
        if isinstance(self.out, Path):
            return (self.out / name).exists()
        return self.exists is not None and self.exists(name)

    def finished(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """Take a segment's record (written to the manifest): the video's record when it was its last segment
        (joined, or failed naming the failed segment), else None."""
        video = self.videos[rec["input"]]
        segment = tuple(rec["segment"])
        video.records[segment] = rec
        video.pending.discard(segment)
        if video.pending:
            return None
        return self.join(video.unit)

    def join(self, unit: Unit) -> dict[str, Any]:
        """The record of a video whose segments have all ended: failed (naming the first failed segment), or its
        parts joined into its files (then removed)."""
        video = self.videos[key(unit.path)]
        recs = [video.records[s] for s in video.segments]
        seconds = sum(r.get("seconds", 0.0) for r in recs)
        frames, hands = sum(r["frames"] for r in recs), sum(r["hands"] for r in recs)
        extra = {"segments": len(recs)}
        bad = next((r for r in recs if r["status"] == "failed"), None)
        if bad is not None:
            start, end = bad["segment"]
            return record(unit, "failed", frames, hands, seconds, f"segment [{start}, {end}) failed: {bad['error']}; "
                          "--resume runs the segments not done", [], **extra)
        start_join = time.perf_counter()
        log.info("%s: joining its %d segments", unit.shown, len(recs))
        try:
            if isinstance(self.out, Path):
                files, frames, hands = join_parts(unit, self.out, self.options, video.segments)
            else:
                files, frames, hands = self._join_remote(unit, video.segments)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a part file damaged since
            return record(unit, "failed", frames, hands, seconds, f"cannot join its segments: {exc}", [], **extra)
        status, error = outcome(unit, Decoded(frames=frames))
        return record(unit, status, frames, hands, seconds + time.perf_counter() - start_join, error, files,
                      **extra)

    def _join_remote(self, unit: Unit, segments: list[tuple[int, int]]) -> tuple[list[str], int, int]:
        """:func:`join_parts` for an output URL: the parts downloaded into a staging folder, joined there, the
        joined files uploaded (before the video's record is written)."""
        from .remote_out import Upload

        upload = Upload(str(self.out))
        try:
            for segment in segments:
                name = part_name(replace(unit, segment=segment))
                (upload.folder / name).parent.mkdir(parents=True, exist_ok=True)
                try:
                    upload.fs.get_file(f"{upload.root}/{name}", str(upload.folder / name))
                except OSError as exc:
                    raise OSError(f"cannot download {redact(str(self.out))}/{name}: {exc}") from None
            files, frames, hands = join_parts(unit, upload.folder, self.options, segments)
            upload.publish(files)
        finally:
            upload.close()
        return files, frames, hands

    def remove_parts(self, name: str | None) -> None:
        """Remove the part files of the video named ``name`` (after its record is written), if any."""
        if name and not isinstance(self.out, Path):
            self._remove_remote(name)
            return
        folder = part_folder(self.out, name) if name else None
        if folder is None or not folder.is_dir():
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the last one
        except OSError:
            pass

    def _remove_remote(self, name: str) -> None:
        """Remove the part objects of the video named ``name`` from the output URL: those of a video segmented in
        this run, or listed at its start."""
        folder = f"{PARTS}/{name}"
        if name not in {v.unit.name for v in self.videos.values()} and not self._has(folder):
            return
        fs, root = filesystem(str(self.out))
        try:
            fs.rm(f"{root.rstrip('/')}/{folder}", recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove its segments' part files from %s (%s)", name, redact(str(self.out)), exc)


def join_parts(unit: Unit, out: Path, options: Options, segments: list[tuple[int, int]]) -> tuple[list[str], int,
                                                                                                      int]:
    """Join the part files of ``segments`` of a video into its files (a :class:`UnitWriter`, as an unsegmented run
    writes them): (files written, frames, hands). Images are decoded again when an output draws them."""
    parts = [part_path(out, replace(unit, segment=s)) for s in segments]
    faces = next((p.faces for p in map(Part, parts) if p.faces is not None), None)
    images = None
    if options.overlay or "rerun" in options.formats:
        images = read_frames(unit, Decoded(), options.max_image_pixels)
    renumber = Renumbering(warmup_frames(options))
    with UnitWriter(unit, out, options, faces) as writer:
        for path in parts:
            part = Part(path)
            for frame in part.frames(unit.shown, renumber.mapping(part)):
                img = None
                if images is not None:
                    index, _, _, img = next(images, (None, None, None, None))
                    if index != frame.index:
                        raise ValueError(f"{unit.shown}: frame {frame.index} cannot be decoded again for the "
                                         "overlay")
                writer.add(frame, img)
                renumber.joined(frame)
    return [f for f in writer.files if (out / f).exists()], writer.frames, writer.hands


class Renumbering:
    """Track ids across the join: each segment's own ids (from 0) mapped to the joined video's, by matching the
    hands its warm-up saw to the hands joined for the same frames (same label, box IoU >= :data:`MATCH_IOU`); the
    other tracks get the next ids in their order of birth, as one tracker over the whole video numbers them."""

    def __init__(self, keep: int) -> None:
        self.keep = keep  # frames of hands kept: the warm-up's
        self.recent: dict[int, list[tuple[int, str, Any]]] = {}  # joined frame -> [(track id, label, box)]
        self.next_id = 0

    def mapping(self, part: Part) -> dict[int, int]:
        """The segment's track ids -> the joined video's."""
        latest: dict[int, tuple[int, str, Any]] = {}
        for index in sorted(part.warmup):
            for track, label, box in part.warmup[index]:
                latest[track] = (index, label, box)
        mapping: dict[int, int] = {}
        used: set[int] = set()
        for track, (index, label, box) in sorted(latest.items(), key=lambda kv: -kv[1][0]):
            scored = [(box_iou(box, b), g) for g, lab, b in self.recent.get(index, [])
                      if lab == label and g not in used]
            best = max(scored, default=None)
            if best is not None and best[0] >= MATCH_IOU:
                mapping[track] = best[1]
                used.add(best[1])
        for track in sorted(part.track_ids() - mapping.keys()):
            mapping[track] = self.next_id
            self.next_id += 1
        return mapping

    def joined(self, frame: Frame) -> None:
        """Note a joined frame's hands (for the next segment's warm-up to match)."""
        hands = [(h.track_id, h.label, h.box) for h in frame.result.hands if h.track_id >= 0]
        self.recent[frame.index] = hands
        self.recent.pop(frame.index - self.keep, None)
        self.next_id = max([self.next_id, *(h[0] + 1 for h in hands)])


__all__ = ["DEFAULT_SEGMENT_FRAMES", "DEFAULT_WARMUP", "PARTS", "Segments", "bounds", "segment_size",
           "warmup_frames"]
