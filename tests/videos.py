"""Test clips made at run time from the photographs (../shared/images), and readers of a run's output folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from hamer.manifest import MANIFEST, TEMP_FILE

from conftest import SHARED_IMAGES as IMAGES


def pan_zoom(photo: str, frames: int, size=(320, 240)) -> list[np.ndarray]:
    """A clip of ``photo``: shifting right and down, zooming in a little, resized to ``size``."""
    img = cv2.imread(str(IMAGES / photo))
    h, w = img.shape[:2]
    out = []
    for i in range(frames):
        s = 1.0 + 0.02 * i
        m = np.float32([[s, 0, 3 * i - (s - 1) * w / 2], [0, s, 2 * i - (s - 1) * h / 2]])
        out.append(cv2.resize(cv2.warpAffine(img, m, (w, h)), size))
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def manifest(out: Path, started: bool = False) -> list[dict]:
    """The records of ``out``'s manifest, in order (the ``started`` and ``dispatched`` ones too when asked)."""
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    return [r for r in records if started or r["status"] not in ("started", "dispatched")]


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if TEMP_FILE.match(p.name)]


def wander(photo: str, frames: int, size=(320, 240), period: int = 40) -> list[np.ndarray]:
    """A clip of ``photo`` drifting back and forth and zooming in and out (a period of ``period`` frames), its hands
    in view throughout: tracks that live across the whole clip."""
    img = cv2.imread(str(IMAGES / photo))
    h, w = img.shape[:2]
    out = []
    for i in range(frames):
        phase = 2 * np.pi * i / period
        s = 1.1 + 0.1 * np.sin(phase)
        dx, dy = 0.05 * w * np.sin(phase / 2), 0.04 * h * np.cos(phase)
        m = np.float32([[s, 0, dx - (s - 1) * w / 2], [0, s, dy - (s - 1) * h / 2]])
        out.append(cv2.resize(cv2.warpAffine(img, m, (w, h)), size))
    return out


def scenes(frames_each: int, photos: tuple[str, ...] = ("test4.jpg", "test8.jpg", "test5.jpeg", "test4.jpg"),
           size=(320, 240)) -> list[np.ndarray]:
    """Scenes of :func:`wander` clips one after another: hands that come and go (new tracks) mid-clip."""
    return [frame for photo in photos for frame in wander(photo, frames_each, size)]
