"""Reading a unit's frames: each readable frame or image of a unit in order, and what reading it whole found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from .images import ImageError, opencv_path, read_image
from .input_cache import InputCache
from .run_types import InputError
from .storage import is_url, redact
from .units import Unit


@dataclass
class Decoded:
    """What reading a unit found: frames decoded (``before``: of them, the warm-up's, before a segment's start),
    and the images skipped, each as "PATH: why"."""

    frames: int = 0
    unreadable: list[str] = field(default_factory=list)
    before: int = 0


def read_frames(unit: Unit, decoded: Decoded, max_pixels: int | None = None, warmup: int = 0,
                cache: InputCache | None = None) -> Iterator[tuple[int, float | None, str, np.ndarray]]:
    """``(index, time_s, source, img_bgr)`` of each readable frame or image of ``unit``; ``decoded`` counts them
    and lists the images skipped (unreadable, or refused by ``hamer.images.read_image`` with ``max_pixels``). A
    video that cannot be opened raises InputError. A segment of a video (``unit.segment``): its frames, after the
    ``warmup`` frames before it (counted in ``decoded.before``). A video at a URL is read from its copy in
    ``cache`` (default: :class:`~hamer.input_cache.InputCache`'s default size), its frame rate and count set on
    ``unit`` then."""
    if unit.kind != "video":
        for index, path in enumerate(unit.images):
            try:
                img = read_image(path, max_pixels)
            except ImageError as exc:
                decoded.unreadable.append(str(exc))
                continue
            except OSError as exc:
                decoded.unreadable.append(f"{redact(path)}: {exc.strerror or exc}")
                continue
            decoded.frames += 1
            yield index, None, redact(path), img
        return
    if is_url(unit.path):
        with (cache or InputCache()).local(unit.path) as copy:
            yield from _read_video(unit, decoded, copy, warmup, probe=True)
        return
    yield from _read_video(unit, decoded, unit.path, warmup)


def _read_video(unit: Unit, decoded: Decoded, path: os.PathLike | str, warmup: int, probe: bool = False
                ) -> Iterator[tuple[int, float | None, str, np.ndarray]]:
    """The frames of ``unit``'s video (a segment: after ``warmup`` frames before it), read from ``path``;
    ``probe``: its frame rate and count set on ``unit``."""
    source = unit.shown
    with opencv_path(path) as name:
        cap = cv2.VideoCapture(name)
        try:
            if not cap.isOpened():
                raise InputError("not an image or a video that OpenCV can read")
            if probe:
                fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                unit.frames = max(count, 0)
                if np.isfinite(fps) and fps > 0:
                    unit.fps = fps
            start, stop = (0, None) if unit.segment is None else unit.segment
            first = max(start - warmup, 0)
            if first and not (cap.set(cv2.CAP_PROP_POS_FRAMES, first)
                              and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == first):
                cap.release()  # no seek there: from the start again, frames dropped
                cap = cv2.VideoCapture(name)
                if not all(cap.grab() for _ in range(first)):
                    return
            while stop is None or first + decoded.frames < stop:
                ok, img = cap.read()
                if not ok:
                    return
                index = first + decoded.frames
                decoded.frames += 1
                decoded.before += index < start
                yield index, index / unit.fps, source, img
        finally:
            cap.release()


def outcome(unit: Unit, decoded: Decoded) -> tuple[str, str | None]:
    """(status, error) of a unit read whole: truncated, failed (nothing read) or done."""
    if unit.segment is not None:
        start, end = unit.segment
        got = decoded.frames - decoded.before
        if decoded.frames == 0 and start == 0:
            return "failed", "not a video that OpenCV can decode (no frame)"
        if got < end - start:
            return "truncated", (f"truncated: {got} of the {end - start} frames of segment [{start}, {end}) could "
                                 "be decoded; those were written")
        return "done", None
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
