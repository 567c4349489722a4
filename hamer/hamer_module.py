"""``HAMER``: 3D hand joints from an image, with your boxes, MediaPipe's or another detector's.

    hamer = HAMER(mode="IMAGE", device="cpu")
    result = hamer.predict(img_bgr)                                   # FrameResult: typed hands
    keypoints, bboxes = hamer.process(img_bgr, {"Right": [x1, y1, x2, y2]})   # the seed's calls
    keypoints, bboxes = hamer.process_with_mediapipe(img_bgr)

``keypoints[label]``: float32 (21, 3) MANO joints in metres, OpenPose order (wrist, thumb 1-4, index 5-8, middle
9-12, ring 13-16, pinky 17-20), in the MANO model frame with camera-aligned axes (x right, y down, z away from the
camera); left hands un-mirrored. Add the hand's ``cam_t`` for camera coordinates.

The network, its weights and MediaPipe are imported and loaded on first use, so ``from hamer import HAMER`` is
cheap. One object may be called from several threads: its calls run one at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import configs
from .detection import HAND_TASK_PATH, POSE_TASK_PATH, detector_options
from .detectors import Detector
from .images import as_bgr
from .model_options import ModelOptions
from .network import load_reconstructor
from .pipeline import Reconstructor, predict_frame
from .results import CameraSpec, FrameResult

if TYPE_CHECKING:
    from yacs.config import CfgNode

log = logging.getLogger(__name__)

hand_path = HAND_TASK_PATH  # the bundled MediaPipe models (the seed's names)
pose_path = POSE_TASK_PATH


class HAMER:
    """HaMeR hand reconstruction. The network and the MediaPipe landmarkers are loaded on first use.

    Args:
        mode: "IMAGE" (frames independent) or "VIDEO" (MediaPipe tracks across frames; timestamps must increase).
        device: torch device string, e.g. "cpu", "cuda", "cuda:1".
        task_paths: MediaPipe bundles {"hand": path, "pose": path}; a missing key disables that landmarker.
            Default: both bundled models.
        num_hands: most hands the hand landmarker reports.
        detector: another hand detector (a :class:`hamer.detectors.Detector`, e.g. ``hamer.boxfile.BoxesFromFile``
            or your own) instead of MediaPipe, which then is never made (``task_paths`` and ``num_hands`` unused).
            It sees the images with their ``timestamp_ms``; it stays yours to close: :meth:`close` leaves it open.
        rescale_factor: crop side = rescale_factor * max(h, 4/3 w) of the box (HaMeR's demo: 2.0).
        data_dir: the HaMeR data folder; default :func:`hamer.configs.data_dir` (``CACHE_DIR_HAMER`` if set, else
            ``$HAMER_HOME``, else the per-user cache), made absolute now, when the HAMER is made.
        download: torch backend: if the data folder holds no checkpoint, download and install HaMeR's weights
            into it now (about 5.6 GB, as ``hamer download``; progress is logged at INFO level).
        checkpoint: a checkpoint path other than ``<data_dir>/hamer_ckpts/checkpoints/hamer.ckpt``.
        precision: torch backend: "fp32" (default), "bf16" (CPU or CUDA autocast) or "fp16" (CUDA autocast).
        backend: "auto" (default): on CPU in fp32, ONNX Runtime on an export of the checkpoint cached on disk
            (made and checked against torch on the first load; ``hamer.onnx_cache``), else torch. "torch": torch
            always. "onnx": ONNX Runtime on ``onnx_path`` (CUDA provider first when ``device`` is
            CUDA and onnxruntime has it). The file alone suffices (config in its metadata; no data folder). For
            8-bit weights pass a file from ``hamer.quantize.quantize_onnx``.
        onnx_path: the ``.onnx`` file the "onnx" backend runs (from ``export_onnx`` or ``hamer.export``).
        export_onnx: torch backend: write the network (MANO included) to this ``.onnx`` path on the first call that
            runs it, check it with ONNX Runtime (RuntimeError if off), then carry on.
        camera: the camera the images come from, to place the hands in: a :class:`~hamer.results.Camera`
            (fx, fy, cx, cy pixels, for every image), a :class:`~hamer.results.FieldOfView` (horizontal, degrees,
            per image size) or a callable ``(W, H) -> Camera``. Default: HaMeR demo's camera (focal 5000 px at
            256 px, scaled to the image's longer side; principal point at the centre). It sets ``cam_t``; the 2D
            joints are HaMeR's and do not depend on it.

    The model's arguments become one :class:`~hamer.model_options.ModelOptions` (``self.model``, the data folder
    made absolute), checked at once (ValueError naming the argument) and loaded by :mod:`hamer.network`, as the
    corpus engines do.
    """

    def __init__(
        self,
        mode: str = "IMAGE",
        device: str = "cpu",
        task_paths: Mapping[str, Any] | None = None,
        num_hands: int = 2,
        rescale_factor: float = 2.0,
        data_dir: configs.PathLike | None = None,
        checkpoint: configs.PathLike | None = None,
        precision: str = "fp32",
        backend: str = "auto",
        onnx_path: configs.PathLike | None = None,
        export_onnx: configs.PathLike | None = None,
        download: bool = False,
        camera: CameraSpec | None = None,
        detector: Detector | None = None,
    ) -> None:
        if detector is not None and not isinstance(detector, Detector):
            raise TypeError(f"detector must have detect(img_bgr, timestamp_ms, frame), close(), __enter__ and "
                            f"__exit__ (hamer.detectors.Detector), got {type(detector).__name__}")
        if detector is not None and task_paths is not None:
            raise ValueError("task_paths choose MediaPipe's models: give them or a detector, not both")
        model = ModelOptions(device=device, backend=backend, precision=precision, checkpoint=checkpoint,
                             onnx=onnx_path, rescale_factor=rescale_factor, camera=camera)
        self.device = model.check()  # its name as torch writes it: "cpu", "cuda:0"
        if export_onnx is not None and backend == "onnx":
            raise ValueError("backend 'onnx' takes no export_onnx (the file is the export)")
        self.mode = mode
        self.model = dataclasses.replace(model, data=configs.data_dir(data_dir), rescale_factor=float(rescale_factor))
        self._export_onnx = export_onnx
        if download and backend != "onnx" and checkpoint is None:
            from .download import ensure_downloaded

            ensure_downloaded(self.model.data)
        self._detector_options = detector_options(task_paths, num_hands, mode)
        self._detector: Detector | None = detector
        self._own_detector = detector is None  # MediaPipe's, made here on first use and closed by close()
        self._reconstructor: Reconstructor | None = None
        self._lock = threading.RLock()
        self._last: FrameResult | None = None
        self._last_dict: dict[str, Any] | None = None

    @property
    def cfg(self) -> CfgNode | None:
        """The model config, once the network is loaded."""
        return None if self._reconstructor is None else self._reconstructor.cfg

    @property
    def last_result(self) -> FrameResult | None:
        """The :class:`FrameResult` of the latest call (from any thread), None before the first."""
        return self._last

    @property
    def result(self) -> dict[str, Any]:
        """The seed's result dict of the latest call (a view of :attr:`last_result`; keys in the README)."""
        with self._lock:
            if self._last is None:
                return {}
            if self._last_dict is None:
                self._last_dict = self._last.as_dict()
            return self._last_dict

    def set_mode(self, mode: str) -> None:
        """Switch between "IMAGE" and "VIDEO" (MediaPipe's running mode; a detector passed in is kept as it is);
        the loaded network is kept."""
        options = dataclasses.replace(self._detector_options, mode=mode)  # ValueError for another mode
        with self._lock:
            if mode != self.mode:
                self.close()
                self.mode = mode
                self._detector_options = options

    def load(self) -> None:
        """Load the network now (otherwise the first call that needs it does). Thread-safe; loads once."""
        with self._lock:
            if self._reconstructor is None:
                self._reconstructor = load_reconstructor(self.model, self.device, self._export_onnx)

    @property
    def rescale_factor(self) -> float:
        """Crop side / box side."""
        return self.model.rescale_factor

    @property
    def precision(self) -> str:
        """The precision: fp32, bf16 or fp16."""
        return self.model.precision

    @property
    def backend(self) -> str:
        """The backend: auto, torch or onnx."""
        return self.model.backend

    @property
    def faces(self) -> np.ndarray | None:
        """(1538, 3) MANO triangles (vertex indices, right-hand winding; loads the network); None for an ONNX
        file exported without them."""
        return self.reconstructor.faces

    def draw(self, img_bgr: np.ndarray, result: FrameResult | None = None, style: str = "mesh",
             **options: Any) -> np.ndarray:
        """:func:`hamer.draw` with this model's MANO triangles: ``result`` (default: the last prediction) drawn on
        ``img_bgr``; ``options``: ``alpha``, ``legend``, ``side_view``."""
        from .overlay import draw

        result = self._last if result is None else result
        if result is None:
            raise ValueError("nothing to draw: give a result, or call predict first")
        meshes = style == "mesh" and any(h.reconstructed for h in result.hands)
        return draw(img_bgr, result, style, faces=self.faces if meshes else None, **options)

    @property
    def reconstructor(self) -> Reconstructor:
        """Detected hands -> reconstructed hands (loads the network on first use)."""
        self.load()
        return self._reconstructor

    @property
    def detector(self) -> Detector:
        """The hand detector: the one passed in, else MediaPipe's (created on first use; closed by :meth:`close`)."""
        from .detection import HandDetector

        with self._lock:
            if self._detector is None:
                self._detector = HandDetector(self._detector_options)
            return self._detector

    def predict(self, img_bgr: np.ndarray, boxes: Mapping[str, Sequence[float]] | None = None, *,
                bbox_only: bool = False, timestamp_ms: int | None = None, color: str = "BGR") -> FrameResult:
        """The hands of one image.

        Args:
            img_bgr: uint8 (H, W, 3) image in ``color`` order (BGR as ``cv2.imread`` gives; (H, W, 4) with alpha
                and grayscale (H, W) are converted), or a PIL image.
            boxes: ``{"Right"|"Left": [x1, y1, x2, y2]}`` pixels, the subject's own hands; None: the detector
                (MediaPipe by default) finds the hands and the most confident of each label is reconstructed.
            bbox_only: detect only; HaMeR is neither loaded nor run (the hands have no joints).
            timestamp_ms: VIDEO mode: the frame's time, increasing from call to call (None: previous + 33 ms).
            color: "BGR" (default, OpenCV) or "RGB" (PIL, matplotlib, imageio): the channel order of ``img_bgr``.
        Returns:
            a :class:`~hamer.results.FrameResult` (hands Right first; frames and units in its docstring).
        """
        img = as_bgr(img_bgr, color)
        with self._lock:
            result = predict_frame(img, None if bbox_only else self.reconstructor, boxes=boxes,
                                   detector=None if boxes is not None else self.detector, timestamp_ms=timestamp_ms)
            self._last, self._last_dict = result, None
        return result

    def process(self, img_bgr: np.ndarray, bboxes: Mapping[str, Sequence[float]], color: str = "BGR"
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """3D joints of the hands in your boxes (the seed's call; see :meth:`predict`).

        Args:
            img_bgr: uint8 (H, W, 3) BGR image (BGRA and grayscale are converted); ``color="RGB"`` for RGB.
            bboxes: {"Right"|"Left": [x1, y1, x2, y2]} in pixels; the label is the subject's own hand.
        Returns:
            keypoints {label: float32 (21, 3) metres}, bboxes {label: float32 (4,) pixels}, Right first.
            ``self.result`` holds the batched outputs (see the README).
        """
        if bboxes is None:
            raise ValueError("bboxes must be a dict {'Right'|'Left': [x1, y1, x2, y2]}, got None")
        result = self.predict(img_bgr, bboxes, color=color)
        return result.keypoints_3d, result.boxes

    def process_with_mediapipe(self, img_bgr: np.ndarray, bbox_only: bool = False,
                               timestamp_ms: int | None = None, color: str = "BGR"
                               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Find the hands with MediaPipe, then reconstruct them unless ``bbox_only`` (the seed's call).

        One hand per label goes to HaMeR: the most confident. ``result["detections"]`` keeps every detected hand,
        ``result["mp_detections"]`` the hands used, ``result["mp_kpts"]`` their MediaPipe landmarks (pixels).
        In VIDEO mode ``timestamp_ms`` must increase from call to call; when omitted one is derived. ``img_bgr`` is
        BGR (``color="RGB"`` for RGB), as :meth:`predict` takes it.
        """
        result = self.predict(img_bgr, bbox_only=bbox_only, timestamp_ms=timestamp_ms, color=color)
        return result.keypoints_3d, result.boxes

    def close(self) -> None:
        """Close the MediaPipe landmarkers, if made here (a detector passed in stays open; the network needs no
        closing)."""
        with self._lock:
            if self._detector is not None and self._own_detector:
                self._detector.close()
                self._detector = None

    def __enter__(self) -> HAMER:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
