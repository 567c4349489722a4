"""Rerun recordings of hands (the optional extra ``pip install "hamer[viewer]"``, rerun-sdk 0.41).

:func:`log_rerun` logs one frame: in the camera's frame (metres, x right, y down, z away: Rerun's
``ViewCoordinates.RDF``, the camera at the origin) a pinhole camera with the result's intrinsics, and under it the
image (JPEG-compressed), the hands' boxes with labels and scores, and their 2D joints and bones; in 3D each
reconstructed hand's MANO mesh and 21 joints (``vertices + cam_t``, ``keypoints_3d + cam_t``), so that the 3D view
seen from the camera lines up with the image. Entities::

    world                               ViewCoordinates RDF (static)
    world/camera                        Pinhole (fx, fy, cx, cy; image size), its image plane drawn in 3D at the
                                        hands' (median) depth
    world/camera/image                  the frame; .../boxes, .../joints/<Right|Left>
    world/hands/<Right|Left>/mesh       Mesh3D (778 vertices, MANO's triangles), with vertex normals
    world/hands/<Right|Left>/joints      Points3D and bones (LineStrips3D, .../bones)

A hand absent from a frame is cleared at that frame. ``hamer.formats.rerun.RerunWriter`` writes a recording
file of a video or folder with it, frame by frame on the ``frame`` timeline (and ``time``, seconds of video).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .mesh_render import MESH_COLORS, hand_triangles
from .overlay import FINGER_COLORS, FINGERS, LABEL_COLORS, caption
from .results import LABELS, FrameResult

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "hamer[viewer]"'
JPEG_QUALITY = 80


def import_rerun() -> Any:
    """The ``rerun`` module; ImportError naming the extra when rerun-sdk is not installed."""
    try:
        import rerun
    except ImportError:
        raise ImportError(f"Rerun recordings need rerun-sdk: {INSTALL_HINT}") from None
    return rerun


def _rgb(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    return bgr[2], bgr[1], bgr[0]


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals: the area-weighted sum of the normals of each vertex's triangles (zero if none)."""
    corners = vertices[triangles]
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


def log_rerun(result: FrameResult, img_bgr: np.ndarray | None = None, faces: np.ndarray | None = None, *,
              frame: int | None = None, time_s: float | None = None, recording: Any = None) -> None:
    """Log the hands of one frame to ``recording`` (default: the current Rerun recording, e.g. after
    ``rr.init("hamer", spawn=True)``; in notebooks then ``rr.notebook_show()``).

    Args:
        result: the frame's hands.
        img_bgr: the uint8 BGR image, logged under the camera (None: not logged).
        faces: (1538, 3) MANO triangles (``HAMER.faces``) for the meshes; None: no meshes (joints still).
        frame, time_s: set the ``frame`` (sequence) and ``time`` (seconds) timelines first, when given.
        recording: a ``rerun.RecordingStream``.
    Raises:
        ImportError: rerun-sdk is not installed (the message names the extra).
    """
    rr = import_rerun()
    rec = {"recording": recording}
    if frame is not None:
        rr.set_time("frame", sequence=int(frame), **rec)
    if time_s is not None:
        rr.set_time("time", duration=float(time_s), **rec)
    rr.log("world", rr.ViewCoordinates.RDF, static=True, **rec)
    width, height = result.image_size
    if result.camera is not None:
        depths = [float(h.cam_t[2]) for h in result.hands if h.cam_t is not None and h.cam_t[2] > 0]
        rr.log("world/camera", rr.Pinhole(image_from_camera=result.camera.matrix, resolution=[width, height],
                                          camera_xyz=rr.ViewCoordinates.RDF,
                                          image_plane_distance=float(np.median(depths)) if depths else None), **rec)
    if img_bgr is not None:
        image = rr.Image(np.ascontiguousarray(img_bgr), color_model="BGR").compress(jpeg_quality=JPEG_QUALITY)
        rr.log("world/camera/image", image, **rec)
    hands = result.hands
    if hands:
        rr.log("world/camera/image/boxes", rr.Boxes2D(
            array=np.stack([h.box for h in hands]), array_format=rr.Box2DFormat.XYXY,
            labels=[caption(h) for h in hands], colors=[_rgb(LABEL_COLORS[h.label]) for h in hands],
            show_labels=True), **rec)
    else:
        rr.log("world/camera/image/boxes", rr.Clear(recursive=False), **rec)
    bones = [[0, *finger] for finger in FINGERS]
    bone_colors = [_rgb(c) for c in FINGER_COLORS]
    for label in LABELS:
        hand = result.get(label)
        joints_2d = None if hand is None else hand.keypoints_2d
        if joints_2d is None:
            rr.log(f"world/camera/image/joints/{label}", rr.Clear(recursive=True), **rec)
        else:
            rr.log(f"world/camera/image/joints/{label}", rr.Points2D(joints_2d, radii=-2.0), **rec)
            rr.log(f"world/camera/image/joints/{label}/bones",
                   rr.LineStrips2D([joints_2d[b] for b in bones], colors=bone_colors), **rec)
        if hand is None or not hand.reconstructed or hand.cam_t is None:
            rr.log(f"world/hands/{label}", rr.Clear(recursive=True), **rec)
            continue
        cam_t = np.asarray(hand.cam_t, dtype=np.float32)
        joints = np.asarray(hand.keypoints_3d, dtype=np.float32) + cam_t
        rr.log(f"world/hands/{label}/joints", rr.Points3D(joints, radii=0.004, colors=_rgb(LABEL_COLORS[label])),
               **rec)
        rr.log(f"world/hands/{label}/joints/bones", rr.LineStrips3D([joints[b] for b in bones], colors=bone_colors),
               **rec)
        if faces is not None and hand.vertices is not None:
            vertices = np.asarray(hand.vertices, dtype=np.float32) + cam_t
            triangles = hand_triangles(hand, faces)
            rr.log(f"world/hands/{label}/mesh", rr.Mesh3D(
                vertex_positions=vertices, triangle_indices=triangles.astype(np.uint32),
                vertex_normals=vertex_normals(vertices.astype(np.float64), triangles).astype(np.float32),
                albedo_factor=_rgb(MESH_COLORS[label])), **rec)


def default_blueprint() -> Any:
    """The viewer's layout for a recording: the 3D camera frame beside the image with its 2D boxes and joints, the
    ``frame`` timeline selected."""
    import rerun.blueprint as rrb

    return rrb.Blueprint(rrb.Horizontal(rrb.Spatial3DView(origin="world", name="3D, camera frame (metres)"),
                                        rrb.Spatial2DView(origin="world/camera", name="image")),
                         rrb.TimePanel(timeline="frame"), collapse_panels=False)
