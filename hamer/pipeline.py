"""One frame through HaMeR: image -> boxes -> crops -> network -> hands, as typed values.

Data flows one way. :func:`hands_from_boxes` (the user's boxes) or a selection of a detector's detections
(:mod:`hamer.detectors`; :func:`best_per_label`, or a video tracker) gives detected-only
:class:`~hamer.results.Hand` values; :class:`Reconstructor` crops them (:func:`make_inputs`), runs the network on
one batch, un-mirrors left hands and places every hand in the full image with a :class:`~hamer.results.Camera`.
:func:`predict_frame` strings these together; ``HAMER``, the video tracker and the command line all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from yacs.config import CfgNode

from .camera import cam_crop_to_full, cam_crop_to_pinhole
from .cropping import CropParams, box_to_crop, crop_images, normalize_patches
from .results import LABELS, Camera, CameraSpec, FrameResult, Hand, ManoParams, NetworkOutput, frozen_array

if TYPE_CHECKING:
    from .detectors import Detector, FrameRef, HandDetection

__all__ = ["LABELS", "Reconstructor", "best_per_label", "box_problem", "check_boxes", "find_hands", "frame_result",
           "hands_from_boxes", "make_inputs", "predict_frame"]

MAX_COORDINATE = 2**24  # px: box coordinates are float32, exact integers up to here
Select = Callable[[Sequence["HandDetection"], tuple[int, ...]], list[Hand]]


class Network(Protocol):
    """A runtime of the network (``hamer.onnx_runtime``, ``hamer.torch_runtime``): (N, 3, S, S) normalized crops
    -> outputs by name."""

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]: ...


def check_boxes(boxes: Mapping[str, Sequence[float]], image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{"Right"|"Left": [x1, y1, x2, y2]}`` in pixels -> float32 (4,) arrays; ValueError naming a bad one.

    A box may extend past the image (the crop's border is zero) but must overlap it.
    """
    if not isinstance(boxes, Mapping):
        raise ValueError(f"boxes must be a dict {{'Right'|'Left': [x1, y1, x2, y2]}}, got {type(boxes).__name__}")
    checked = {}
    for label, box in boxes.items():
        if label not in LABELS:
            raise ValueError(f"hand label must be 'Right' or 'Left', got {label!r}")
        if hasattr(box, "detach"):  # a torch tensor, perhaps on a GPU or requiring grad
            box = box.detach().cpu().numpy()
        try:
            arr = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{label} box must be 4 numbers [x1, y1, x2, y2], got {box!r}") from None
        if arr.shape != (4,):
            raise ValueError(f"{label} box must be 4 numbers [x1, y1, x2, y2], got {arr.size}")
        problem = box_problem(arr, image_shape)
        if problem:
            raise ValueError(f"{label} box {arr.tolist()} {problem}")
        checked[label] = arr.astype(np.float32)
    return checked


def box_problem(box: np.ndarray, image_shape: tuple[int, ...]) -> str | None:
    """Why an (x1, y1, x2, y2) pixel box cannot be cropped from an image of ``image_shape``, or None if it can."""
    height, width = image_shape[:2]
    if not np.isfinite(box).all():
        return "has a NaN or infinite coordinate"
    if np.abs(box).max() > MAX_COORDINATE:
        return f"has a coordinate beyond +-{MAX_COORDINATE} px"
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return "is inverted or has zero size (need x2 > x1, y2 > y1)"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"lies entirely outside the {width}x{height} image"
    return None


def hands_from_boxes(boxes: Mapping[str, Sequence[float]], image_shape: tuple[int, ...]) -> list[Hand]:
    """The user's ``{"Right"|"Left": box}`` (checked by :func:`check_boxes`) as detected-only hands, Right first."""
    checked = check_boxes(boxes, image_shape)
    return [Hand(label=label, box=frozen_array(checked[label])) for label in LABELS if label in checked]


def best_per_label(detections: Sequence[HandDetection], image_shape: tuple[int, ...]) -> list[Hand]:
    """The most confident detection of each label whose box overlaps the image, as detected-only hands, Right
    first (MediaPipe's boxes always overlap the image they come from; another detector's might not)."""
    chosen: dict[str, HandDetection] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        if box_problem(np.asarray(det.box, dtype=np.float64), image_shape) is None:
            chosen.setdefault(det.label, det)
    return [Hand.from_detection(chosen[label]) for label in LABELS if label in chosen]


def make_inputs(img_bgr: np.ndarray, boxes: np.ndarray, rights: np.ndarray, cfg: CfgNode,
                rescale_factor: float) -> tuple[np.ndarray, list[CropParams]]:
    """(N, 4) boxes, (N,) right flags -> (N, 3, S, S) network input and the crops' parameters."""
    size = int(cfg.MODEL.IMAGE_SIZE)
    bbox_shape = tuple(cfg.MODEL.BBOX_SHAPE)
    crops = [box_to_crop(b, bool(r), rescale_factor, bbox_shape) for b, r in zip(boxes, rights, strict=True)]
    patches = crop_images(img_bgr, crops, size)
    return normalize_patches(patches, cfg.MODEL.IMAGE_MEAN, cfg.MODEL.IMAGE_STD), crops


class Reconstructor:
    """Detected hands of an image -> reconstructed hands: crops, one network batch, full-image placement.

    Args:
        network: runs the network on normalized crops (``hamer.onnx_runtime.OnnxRuntime``, ``hamer.torch_runtime.
            TorchRuntime``).
        cfg: the model config (crop size, normalization, focal length).
        rescale_factor: crop side = ``rescale_factor * max(h, 4/3 w)`` of the box (HaMeR's demo: 2.0).
    """

    def __init__(self, network: Network, cfg: CfgNode, rescale_factor: float = 2.0,
                 camera: CameraSpec | None = None) -> None:
        self.network = network
        self.cfg = cfg
        self.rescale_factor = float(rescale_factor)
        self.camera_spec = camera

    @property
    def faces(self) -> np.ndarray | None:
        """(1538, 3) MANO triangles (vertex indices, right-hand winding); None when the runtime has none (ONNX)."""
        return getattr(self.network, "faces", None)

    def default_camera(self, image_size: tuple[int, int]) -> Camera:
        """HaMeR demo's camera of a ``(W, H)`` image (focal 5000 px at 256 px, scaled to the image's longer side)."""
        return Camera.hamer_default(image_size, float(self.cfg.EXTRA.FOCAL_LENGTH), int(self.cfg.MODEL.IMAGE_SIZE))

    def camera(self, image_size: tuple[int, int]) -> Camera:
        """The camera the hands of a ``(W, H)`` image are placed in: the user's, else HaMeR demo's."""
        if self.camera_spec is None:
            return self.default_camera(image_size)
        if isinstance(self.camera_spec, Camera):
            return self.camera_spec
        return self.camera_spec(image_size)

    def __call__(self, img_bgr: np.ndarray, hands: Sequence[Hand]) -> list[Hand]:
        """Reconstruct ``hands`` (boxes in ``img_bgr``, a uint8 BGR image) in one batch; same order."""
        return self.batch([(img_bgr, hands)])[0]

    def batch(self, frames: Sequence[tuple[np.ndarray, Sequence[Hand]]]) -> list[list[Hand]]:
        """Reconstruct the hands of several images with ONE network call: ``[(img_bgr, hands), ...]`` -> the
        reconstructed hands of each image, in order. The crops of all images are stacked into one batch; each
        image's hands are then placed with its own camera, exactly as one image at a time (a batch's composition
        can only change the network's float rounding: see the README's *Corpora*)."""
        prepared = [self.prepare(img, hands) for img, hands in frames]
        inputs = [p[0] for p in prepared if p is not None]
        if not inputs:
            return [[] for _ in frames]
        net = self.network(np.concatenate(inputs))
        out, start = [], 0
        for (img, hands), prep in zip(frames, prepared, strict=True):
            if prep is None:
                out.append([])
                continue
            stop = start + len(hands)
            out.append(self.place(img.shape, hands, prep[1], {k: v[start:stop] for k, v in net.items()}))
            start = stop
        return out

    def prepare(self, img_bgr: np.ndarray, hands: Sequence[Hand]) -> tuple[np.ndarray, list[CropParams]] | None:
        """The (N, 3, S, S) network input of ``hands`` in ``img_bgr`` and their crops; None without hands."""
        if not hands:
            return None
        rights = np.array([h.label == "Right" for h in hands])
        return make_inputs(img_bgr, np.stack([h.box for h in hands]), rights, self.cfg, self.rescale_factor)

    def place(self, image_shape: tuple[int, ...], hands: Sequence[Hand], crops: Sequence[CropParams],
              net: Mapping[str, np.ndarray]) -> list[Hand]:
        """``hands`` with the network's outputs ``net`` (their rows, same order) placed in the full image."""
        height, width = image_shape[:2]
        rights = np.array([h.label == "Right" for h in hands])
        placed = place_hands(net, rights, crops, (width, height), self.default_camera((width, height)),
                        self.camera((width, height)))
        box_size = placed.pop("box_size")
        return [hand.replace(**{k: v[i] for k, v in placed.items()}, box_size=float(box_size[i]),
                             mano=ManoParams(*(frozen_array(net[k][i]) for k in ("global_orient", "hand_pose",
                                                                                  "betas"))),
                             raw=NetworkOutput(*(frozen_array(net[k][i]) for k in (
                                 "pred_cam", "pred_cam_t", "focal_length", "pred_keypoints_3d", "pred_vertices",
                                 "pred_keypoints_2d"))))
                for i, hand in enumerate(hands)]


def place_hands(net: Mapping[str, np.ndarray], rights: np.ndarray, crops: Sequence[CropParams],
                image_size: tuple[int, int], default: Camera, camera: Camera) -> dict[str, np.ndarray]:
    """Un-mirrored joints and vertices, the camera translation and the joints projected into the image.

    Returns ``keypoints_3d`` (N,21,3) and ``vertices`` (N,778,3) in metres (MANO frame, x of left hands negated
    back), ``cam_t`` (N,3) metres for ``camera`` (HaMeR demo's ``cam_crop_to_full`` for its ``default`` camera,
    :func:`~hamer.camera.cam_crop_to_pinhole` for another), ``keypoints_2d`` (N,21,2) image pixels: the joints
    projected with HaMeR's camera, whatever ``camera`` is (HaMeR's 2D joints do not depend on the camera),
    ``box_center`` (N,2) and ``box_size`` (N,) pixels.
    """
    sign = 2 * rights.astype(np.float32) - 1
    unmirror = np.ones((len(sign), 1, 3), dtype=np.float32)
    unmirror[:, 0, 0] = sign
    keypoints_3d = net["pred_keypoints_3d"] * unmirror
    vertices = net["pred_vertices"] * unmirror

    pred_cam = net["pred_cam"].astype(np.float32)  # (a copy)
    pred_cam[:, 1] = sign * pred_cam[:, 1]
    box_center = np.stack([c.center for c in crops]).astype(np.float32)
    box_size = np.array([c.size for c in crops], dtype=np.float32)
    img_size = np.array([image_size] * len(crops), dtype=np.float32)
    default_t = cam_crop_to_full(pred_cam, box_center, box_size, img_size, np.float32(default.fx))
    cam_t = default_t if camera == default else cam_crop_to_pinhole(
        pred_cam.astype(np.float64), box_center.astype(np.float64), box_size.astype(np.float64), camera.fx,
        camera.fy, camera.cx, camera.cy).astype(np.float32)
    return {
        "keypoints_3d": keypoints_3d,
        "vertices": vertices,
        "cam_t": cam_t,
        "keypoints_2d": default.project(keypoints_3d + default_t[:, None]),
        "box_center": box_center,
        "box_size": box_size,
    }


def find_hands(img_bgr: np.ndarray, *, boxes: Mapping[str, Sequence[float]] | None = None,
               detector: Detector | None = None, select: Select = best_per_label, timestamp_ms: int | None = None,
               frame: FrameRef | None = None) -> tuple[list[Hand], tuple[HandDetection, ...] | None]:
    """The detected-only hands of one image to reconstruct, and every detection (None for ``boxes``): see
    :func:`predict_frame`; ``frame``: where the image comes from, for the detector."""
    if boxes is not None:
        return hands_from_boxes(boxes, img_bgr.shape), None
    if detector is None:
        raise ValueError("predict_frame needs boxes or a detector")
    detections = tuple(detector.detect(img_bgr, timestamp_ms=timestamp_ms, frame=frame))
    return select(detections, img_bgr.shape), detections


def frame_result(image_shape: tuple[int, ...], hands: Sequence[Hand], detections: tuple[HandDetection, ...] | None,
                 reconstructor: Reconstructor | None) -> FrameResult:
    """The :class:`FrameResult` of an image of ``image_shape`` whose ``hands`` were reconstructed by
    ``reconstructor`` (None: detected only, no camera)."""
    height, width = image_shape[:2]
    camera = None if reconstructor is None else reconstructor.camera((width, height))
    return FrameResult(tuple(hands), (width, height), camera, detections)


def predict_frame(img_bgr: np.ndarray, reconstructor: Reconstructor | None, *,
                  boxes: Mapping[str, Sequence[float]] | None = None, detector: Detector | None = None,
                  select: Select = best_per_label, timestamp_ms: int | None = None) -> FrameResult:
    """The hands of one uint8 BGR image.

    With ``boxes`` (``{"Right"|"Left": [x1, y1, x2, y2]}`` pixels) HaMeR runs on them; otherwise ``detector``
    (:class:`hamer.detectors.Detector`) finds the hands (``timestamp_ms`` for video frames) and ``select`` picks
    the ones to reconstruct, with their labels (default: the most confident of each label). ``reconstructor``
    None: detected-only hands (no HaMeR).
    """
    hands, detections = find_hands(img_bgr, boxes=boxes, detector=detector, select=select,
                                   timestamp_ms=timestamp_ms)
    if reconstructor is not None:
        hands = reconstructor(img_bgr, hands)
    return frame_result(img_bgr.shape, hands, detections, reconstructor)
