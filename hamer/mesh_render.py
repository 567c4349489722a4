"""The hands' MANO meshes drawn over an image: z-buffered (:mod:`hamer.raster`), flat Lambert shading.

Each face is lit by a point light at the camera centre: its brightness is ``AMBIENT + (1 - AMBIENT) |cos a|``, a
the angle between the face's normal and the direction to the light (two-sided, so that the inside of the open
wrist is lit as the outside). Right hands are orange, left hands light blue (HaMeR's demo colour), as the boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .raster import rasterize
from .results import Camera, Hand

MESH_COLORS = {"Right": (110, 180, 250), "Left": (219, 189, 166)}  # BGR
AMBIENT = 0.3  # brightness of a face edge-on to the light (HaMeR's demo scene: ambient light 0.3)
SIDE_VIEW_DEG = 90.0  # the side view turns each hand about the camera's vertical axis, as HaMeR's demo


def hand_triangles(hand: Hand, faces: np.ndarray) -> np.ndarray:
    """(T, 3) triangles of a hand: MANO's right-hand ``faces``, their winding reversed for a left hand (its
    vertices are mirrored), so that normals (right-hand rule) point out of the hand."""
    faces = np.asarray(faces, dtype=np.int64)
    return faces if hand.label == "Right" else faces[:, ::-1]


def turned(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """(N, 3) points turned by ``degrees`` about the y axis (camera's vertical, down) through the origin."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    return np.asarray(vertices, dtype=np.float64) @ rot.T


def lambert(normals: np.ndarray, to_light: np.ndarray) -> np.ndarray:
    """Brightness in [AMBIENT, 1] of faces with (T, 3) ``normals`` lit from the (T, 3) directions ``to_light``
    (neither need be unit length; a zero normal gets AMBIENT)."""
    n = np.linalg.norm(normals, axis=1) * np.linalg.norm(to_light, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.abs(np.einsum("ij,ij->i", normals, to_light)) / n
    return AMBIENT + (1.0 - AMBIENT) * np.nan_to_num(np.clip(cos, 0.0, 1.0))


def scene(hands: Sequence[Hand], faces: np.ndarray, turn_deg: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reconstructed ``hands`` as one mesh in the camera frame: (N, 3) vertices (``vertices`` turned by
    ``turn_deg`` about the hand's MANO origin, plus ``cam_t``), (T, 3) triangles, (T, 3) float BGR face colours."""
    verts, tris, colors = [], [], []
    offset = 0
    for hand in hands:
        if not hand.reconstructed or hand.vertices is None or hand.cam_t is None:
            continue
        v = turned(hand.vertices, turn_deg) + np.asarray(hand.cam_t, dtype=np.float64)
        t = hand_triangles(hand, faces)
        verts.append(v)
        tris.append(t + offset)
        colors.append(np.broadcast_to(np.array(MESH_COLORS[hand.label], dtype=np.float64), t.shape))
        offset += len(v)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3))
    return np.concatenate(verts), np.concatenate(tris), np.concatenate(colors)


def draw_meshes(img_bgr: np.ndarray, hands: Sequence[Hand], faces: np.ndarray, camera: Camera, alpha: float = 1.0,
                turn_deg: float = 0.0, inplace: bool = False) -> np.ndarray:
    """The uint8 BGR image (a copy unless ``inplace``) with the meshes of the reconstructed ``hands`` drawn, seen by
    ``camera``: ``alpha`` the opacity in [0, 1]; ``turn_deg`` turns each hand (see :func:`scene`)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = img_bgr if inplace else np.ascontiguousarray(img_bgr).copy()
    vertices, triangles, colors = scene(hands, faces, turn_deg)
    if not len(triangles):
        return out
    height, width = out.shape[:2]
    raster = rasterize(vertices, triangles, camera, (width, height))
    covered = raster.face >= 0
    if not covered.any():
        return out
    corners = vertices[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    shade = lambert(normals, -corners.mean(axis=1))  # the light at the camera centre
    lut = np.zeros((len(triangles) + 1, 4), np.uint8)  # BGR and a pad byte per face, the last row for no face
    lut[:-1, :3] = np.clip(colors * shade[:, None] + 0.5, 0, 255)
    (x, y), (h, w) = raster.origin, raster.face.shape
    box = out[y:y + h, x:x + w]
    color = np.take(lut.view(np.uint32).reshape(-1), raster.face).view(np.uint8).reshape(h, w, 4)
    color = cv2.cvtColor(color, cv2.COLOR_BGRA2BGR)  # (h, w, 3) contiguous
    if alpha < 1.0:
        cv2.addWeighted(box, 1.0 - alpha, color, alpha, 0.0, dst=color)
    if box.flags.writeable and box.strides[0] > 0 and box.strides[1:] == (3, 1):
        cv2.copyTo(color, covered.view(np.uint8), box)  # in place: OpenCV writes into the view
    else:  # a view OpenCV cannot write into (reversed, strided or read-only): numpy's masked copy
        np.copyto(box, color, where=covered[:, :, None])
    return out
