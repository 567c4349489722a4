"""Overlay videos written frame by frame: H.264 MP4 (PyAV) or VP9 WebM (OpenCV), whole or not at all."""

from __future__ import annotations

import functools
import logging
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .files import atomic_path

log = logging.getLogger(__name__)

VIDEO_CODECS = {"h264": ".mp4", "vp9": ".webm", "mp4v": ".mp4"}  # codec -> file suffix
_CV2_FOURCC = {"vp9": "VP90", "mp4v": "mp4v"}


@functools.cache
def browser_codec() -> str:
    """The overlay videos' codec: "h264" (H.264 in MP4, by PyAV's FFmpeg) when PyAV has an H.264 encoder, else
    "vp9" (VP9 in WebM, by OpenCV) when OpenCV can write it, else "mp4v" (MPEG-4 Part 2, which browsers do not
    play). Both of the first two play in browsers."""
    try:
        import av

        av.codec.Codec("libx264", "w")
        return "h264"
    except Exception:  # noqa: BLE001 - PyAV missing, or built without libx264
        pass
    with tempfile.TemporaryDirectory() as folder:
        writer = cv2.VideoWriter(str(Path(folder) / "probe.webm"), cv2.VideoWriter_fourcc(*"VP90"), 25, (16, 16))
        ok = writer.isOpened()
        writer.release()
    if ok:
        return "vp9"
    log.warning("neither PyAV's H.264 nor OpenCV's VP9 encoder is installed: overlay videos are MPEG-4 Part 2, "
                "which browsers do not play (pip install av)")
    return "mp4v"


class VideoFileWriter:
    """A video written frame by frame, whole or not at all: ``codec`` one of :data:`VIDEO_CODECS` (default
    :func:`browser_codec`), in the container of ``path``'s suffix; its size is the first frame's, odd sides padded
    by a pixel (edge repeated) to the even sides 4:2:0 video needs.

    Use as a context manager: the file appears when the block completes (and a frame was written).
    """

    def __init__(self, path: Path, fps: float, codec: str | None = None) -> None:
        self.path, self.fps = Path(path), fps
        self.codec = codec or browser_codec()
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {self.codec!r}")
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> VideoFileWriter:
        return self

    def write(self, img_bgr: np.ndarray) -> None:
        if self._writer is None:
            self._open(img_bgr.shape[1], img_bgr.shape[0])
        height, width = img_bgr.shape[:2]
        pad_w, pad_h = self._size[0] - width, self._size[1] - height
        if pad_w or pad_h:
            img_bgr = cv2.copyMakeBorder(img_bgr, 0, max(pad_h, 0), 0, max(pad_w, 0), cv2.BORDER_REPLICATE)
            img_bgr = img_bgr[:self._size[1], :self._size[0]]
        if self.codec == "h264":
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img_bgr), format="bgr24")
            for packet in self._stream.encode(frame):
                self._writer.mux(packet)
        else:
            self._writer.write(img_bgr)

    def _open(self, width: int, height: int) -> None:
        self._file = atomic_path(self.path)
        tmp = self._file.__enter__()
        self._size = (width + width % 2, height + height % 2)
        try:
            if self.codec == "h264":
                import av

                self._av = av
                try:
                    self._fh = open(tmp, "wb")  # noqa: SIM115 - closed in __exit__, after the container
                except OSError as exc:
                    raise OSError(f"cannot write an H.264 video ({self.path}): {exc.strerror or exc}") from None
                self._writer = av.open(self._fh, mode="w", format="mp4", options={"movflags": "+faststart"})
                self._stream = self._writer.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
                self._stream.width, self._stream.height = self._size
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": "20", "preset": "veryfast"}
            else:
                fourcc = cv2.VideoWriter_fourcc(*_CV2_FOURCC[self.codec])
                self._writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise OSError(f"cannot write a {self.codec} video ({self.path}): OpenCV cannot open it")
        except BaseException as exc:
            self._file.__exit__(type(exc), exc, exc.__traceback__)
            self._writer = None
            raise
        log.info("overlay video %s: %s", self.path, {"h264": "H.264 in MP4 (PyAV)", "vp9": "VP9 in WebM (OpenCV)",
                                                      "mp4v": "MPEG-4 Part 2 in MP4 (OpenCV)"}[self.codec])

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._writer is None:
            return
        try:
            if self.codec == "h264":
                try:
                    if exc_type is None:
                        for packet in self._stream.encode():
                            self._writer.mux(packet)
                    self._writer.close()
                finally:
                    self._fh.close()
            else:
                self._writer.release()
        finally:
            self._file.__exit__(exc_type, exc, tb)
