"""``HAMER``: 3D hand joints from an image, with your boxes or MediaPipe's.

    hamer = HAMER(mode="IMAGE", device="cpu")
    keypoints, bboxes = hamer.process(img_bgr, {"Right": [x1, y1, x2, y2]})
    keypoints, bboxes = hamer.process_with_mediapipe(img_bgr)

``keypoints[label]``: float32 (21, 3) MANO joints in metres, OpenPose order (wrist, thumb 1-4, index 5-8, middle
9-12, ring 13-16, pinky 17-20), in the MANO model frame with camera-aligned axes (x right, y down, z away from the
camera); left hands un-mirrored. Add ``result["cam_t_full"][i]`` for camera coordinates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from yacs.config import CfgNode

from . import configs
from .checkpoint import build_model
from .detection import HAND_TASK_PATH, POSE_TASK_PATH, DetectorOptions, HandDetection, HandDetector
from .export import ExportOnFirstCall
from .images import as_bgr
from .pipeline import LABELS, check_boxes, hand_outputs, make_inputs
from .runtime import OnnxRuntime, TorchRuntime, check_precision, resolve_device

log = logging.getLogger(__name__)

hand_path = HAND_TASK_PATH
pose_path = POSE_TASK_PATH

MODES = ("IMAGE", "VIDEO")
BACKENDS = ("torch", "onnx")


class HAMER:
    """HaMeR hand reconstruction. The network and the MediaPipe landmarkers are loaded on first use.

    Args:
        mode: "IMAGE" (frames independent) or "VIDEO" (MediaPipe tracks across frames; timestamps must increase).
        device: torch device string, e.g. "cpu", "cuda", "cuda:1".
        task_paths: MediaPipe bundles {"hand": path, "pose": path}; a missing key disables that landmarker.
            Default: both bundled models.
        num_hands: most hands the hand landmarker reports.
        rescale_factor: crop side = rescale_factor * max(h, 4/3 w) of the box (HaMeR's demo: 2.0).
        data_dir: the HaMeR data folder; default ``hamer.configs.CACHE_DIR_HAMER`` as set when the model loads.
        checkpoint: a checkpoint path other than ``<data_dir>/hamer_ckpts/checkpoints/hamer.ckpt``.
        precision: torch backend: "fp32" (default), "bf16" (CPU or CUDA autocast) or "fp16" (CUDA autocast).
        backend: "torch" (default) or "onnx": ONNX Runtime on ``onnx_path`` (CUDA provider first when ``device`` is
            CUDA and onnxruntime has it). The file alone suffices (config in its metadata; no data folder). For
            8-bit weights pass a file from ``hamer.export.quantize_onnx``.
        onnx_path: the ``.onnx`` file the "onnx" backend runs (from ``export_onnx`` or ``hamer.export``).
        export_onnx: torch backend: write the network (MANO included) to this ``.onnx`` path on the first call that
            runs it, check it with ONNX Runtime (RuntimeError if off), then carry on.
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
        backend: str = "torch",
        onnx_path: configs.PathLike | None = None,
        export_onnx: configs.PathLike | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (isinstance(rescale_factor, (int, float)) and np.isfinite(rescale_factor) and rescale_factor > 0):
            raise ValueError(f"rescale_factor must be a positive number, got {rescale_factor!r}")
        if task_paths is None:
            task_paths = {"hand": hand_path, "pose": pose_path}
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "onnx" and (onnx_path is None or export_onnx is not None or precision != "fp32"):
            raise ValueError("backend 'onnx' needs onnx_path and takes no export_onnx or precision (the file sets "
                             "the weights' precision: see hamer.export.quantize_onnx)")
        unknown = set(task_paths) - {"hand", "pose"}
        if unknown:
            raise ValueError(f"task_paths keys must be 'hand' and/or 'pose', got {sorted(unknown)}")
        self.mode = mode
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.rescale_factor = float(rescale_factor)
        self.precision = precision
        self.backend = backend
        self._onnx_path = onnx_path
        self._export_onnx = export_onnx
        self._data_dir = data_dir
        self._checkpoint = checkpoint
        self._detector_options = DetectorOptions(
            hand_task_path=task_paths.get("hand"), pose_task_path=task_paths.get("pose"), mode=mode,
            num_hands=num_hands,
        )
        self._detector: HandDetector | None = None
        self._runtime: TorchRuntime | OnnxRuntime | ExportOnFirstCall | None = None
        self.cfg: CfgNode | None = None
        self.result: dict[str, Any] = {}

    def set_mode(self, mode: str) -> None:
        """Switch between "IMAGE" and "VIDEO" (MediaPipe's running mode); the loaded network is kept."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != self.mode:
            self.close()
            self.mode = mode
            self._detector_options = dataclasses.replace(self._detector_options, mode=mode)

    def load(self) -> None:
        """Load the network now (otherwise the first call that needs it does)."""
        if self._runtime is not None:
            return
        start = time.perf_counter()
        if self.backend == "onnx":
            self._runtime = OnnxRuntime(self._onnx_path, self.device)
            self.cfg = self._runtime.cfg
            log.info("HaMeR loaded from %s (ONNX Runtime) in %.1f s", self._onnx_path, time.perf_counter() - start)
            return
        paths = configs.data_paths(self._data_dir, self._checkpoint)
        model, self.cfg = build_model(paths)
        self._runtime = TorchRuntime(model, self.device, self.precision)
        if self._export_onnx is not None:
            self._runtime = ExportOnFirstCall(self._runtime, self.cfg, self._export_onnx)
        log.info("HaMeR loaded from %s in %.1f s", paths.checkpoint, time.perf_counter() - start)

    def process(self, img_bgr: np.ndarray, bboxes: Mapping[str, Sequence[float]]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """3D joints of the hands in your boxes.

        Args:
            img_bgr: uint8 (H, W, 3) BGR image (BGRA and grayscale are converted).
            bboxes: {"Right"|"Left": [x1, y1, x2, y2]} in pixels; the label is the subject's own hand.
        Returns:
            keypoints {label: float32 (21, 3) metres}, bboxes {label: float32 (4,) pixels}. ``self.result`` holds
            the batched outputs (see the README).
        """
        img = as_bgr(img_bgr)
        boxes = check_boxes(bboxes, img.shape)
        self.result = self._run(img, boxes)
        return self._per_hand(self.result), boxes

    def process_with_mediapipe(self, img_bgr: np.ndarray, bbox_only: bool = False,
                               timestamp_ms: int | None = None
                               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Find the hands with MediaPipe, then reconstruct them (unless ``bbox_only``).

        One hand per label goes to HaMeR: the most confident. ``result["detections"]`` keeps every detected hand,
        ``result["mp_detections"]`` the hands used, ``result["mp_kpts"]`` their MediaPipe landmarks (pixels).
        In VIDEO mode ``timestamp_ms`` must increase from call to call; when omitted one is derived.
        """
        img = as_bgr(img_bgr)
        detections = self._get_detector().detect(img, timestamp_ms=timestamp_ms)
        chosen: dict[str, HandDetection] = {}
        for det in sorted(detections, key=lambda d: -d.score):
            chosen.setdefault(det.label, det)
        boxes = {label: chosen[label].box.astype(np.float32) for label in LABELS if label in chosen}
        mp_fields = {
            "detections": detections,
            "mp_detections": {label: chosen[label] for label in boxes},
            "mp_kpts": {label: chosen[label].landmarks for label in boxes},
            "mp_source": {label: chosen[label].source for label in boxes},
        }
        if bbox_only:
            self.result = {"hands": list(boxes), **mp_fields}
            return {}, boxes
        self.result = {**self._run(img, boxes), **mp_fields}
        return self._per_hand(self.result), boxes

    def _run(self, img: np.ndarray, boxes: Mapping[str, np.ndarray]) -> dict[str, Any]:
        labels = list(boxes)
        if not labels:
            return {"hands": []}
        self.load()
        rights = np.array([label == "Right" for label in labels])
        inputs, crops = make_inputs(img, np.stack([boxes[k] for k in labels]), rights, self.cfg, self.rescale_factor)
        net = self._runtime(inputs)
        result: dict[str, Any] = {
            "pred_cam": net["pred_cam"],
            "pred_cam_t": net["pred_cam_t"],
            "focal_length": net["focal_length"],
            "pred_keypoints_3d": net["pred_keypoints_3d"],
            "pred_vertices": net["pred_vertices"],
            "pred_keypoints_2d": net["pred_keypoints_2d"],
            "pred_mano_params": {k: net[k] for k in ("global_orient", "hand_pose", "betas")},
            "hands": labels,
            "right": rights,
        }
        result.update(hand_outputs(net, rights, crops, img.shape, self.cfg))
        return result

    @staticmethod
    def _per_hand(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {label: result["keypoints_3d"][i] for i, label in enumerate(result["hands"])}

    def _get_detector(self) -> HandDetector:
        if self._detector is None:
            self._detector = HandDetector(self._detector_options)
        return self._detector

    def close(self) -> None:
        """Close the MediaPipe landmarkers (the network needs no closing)."""
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def __enter__(self) -> HAMER:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
