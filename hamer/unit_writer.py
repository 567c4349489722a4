"""The outputs of one unit, whole or not at all (:class:`UnitWriter`)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import refuse_link
from .outputs import Frame, write_image
from .units import Options, Unit
from .video import VideoFileWriter

log = logging.getLogger(__name__)


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
                        "draws skeletons", unit.shown)
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
