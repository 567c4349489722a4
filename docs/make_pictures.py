"""Makes the pictures of docs/CLI.md and docs/DRAWING.md from ../shared/images (run from the repository root).

* overlay_bbox_only.jpg: ``hamer run ../shared/images/test5.jpeg --bbox-only --overlay`` as the command writes it.
* overlay_skeleton.jpg: :func:`hamer.overlay.draw_hands` fed MediaPipe's 21 landmarks (the same OpenPose joint
  order) as ``keypoints_2d`` on test4.jpg (enlarged 2x, cropped): what the skeleton drawing looks like on real
  hands (the tests' synthetic model gives random joints; the real checkpoint is not part of the repository).
* overlay_mesh.jpg: :func:`hamer.draw` (``style="mesh"``, ``legend=True``, ``side_view=True``) on test2.png. The
  real checkpoint and MANO are not part of the repository, and the synthetic model's random weights and random
  MANO triangles give a spiky ball, so the mesh drawn is NOT HaMeR's: it is a tube mesh around MediaPipe's 21
  3D hand landmarks (world landmarks, metres), placed in HaMeR's default camera by PnP on the 2D landmarks. It is
  drawn by the same code, the same way, as a MANO mesh (z-buffer, shading, colours, side view).
* rerun_viewer.jpg (``python docs/make_pictures.py FILE.rrd``; needs Xvfb and Mesa's Vulkan driver): Rerun's
  viewer on FILE.rrd, a recording written by ``hamer run --rerun``'s writer of a 30-frame clip made from test2.png
  (turning and zooming), its hands the same tube meshes; frame 15.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

from hamer import draw
from hamer.detection import HAND_TASK_PATH, DetectorOptions, HandDetector
from hamer.overlay import FINGERS, draw_hands
from hamer.results import Camera, FrameResult, Hand, frozen_array

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
DOCS = Path(__file__).resolve().parent
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 85]


def tube(a: np.ndarray, b: np.ndarray, radius: float, sides: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A closed cylinder from ``a`` to ``b`` (metres): (2 sides + 2, 3) vertices, (4 sides, 3) triangles."""
    axis = b - a
    axis = axis / max(np.linalg.norm(axis), 1e-9)
    u = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    angles = 2 * np.pi * np.arange(sides) / sides
    ring = radius * (np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v)
    vertices = np.concatenate([a + ring, b + ring, [a, b]])
    faces = []
    for i in range(sides):
        j = (i + 1) % sides
        faces += [(i, j, sides + i), (j, sides + j, sides + i)]  # the side
        faces += [(2 * sides, j, i), (2 * sides + 1, sides + i, sides + j)]  # the end caps
    return vertices, np.array(faces)


def tube_hand(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand-like mesh of tubes along the bones of 21 OpenPose-order joints, and across the palm."""
    bones = [(0 if i == 0 else f[i - 1], f[i], 0.009 if i < 3 else 0.0075) for f in FINGERS for i in range(4)]
    bones += [(1, 5, 0.01), (5, 9, 0.01), (9, 13, 0.01), (13, 17, 0.01), (0, 9, 0.014), (0, 13, 0.013)]
    verts, faces, offset = [], [], 0
    for a, b, radius in bones:
        v, f = tube(joints[a], joints[b], radius)
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def tube_hands(img: np.ndarray) -> tuple[FrameResult, np.ndarray | None]:
    """The hands MediaPipe finds in ``img`` as tube meshes in HaMeR's default camera, and the meshes' triangles."""
    height, width = img.shape[:2]
    camera = Camera.hamer_default((width, height))
    options = vision.HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(HAND_TASK_PATH)),
                                           num_hands=2)
    with vision.HandLandmarker.create_from_options(options) as landmarker:
        found = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img[:, :, ::-1].copy()))
    hands, faces = [], None
    for handed, points, world in zip(found.handedness, found.hand_landmarks, found.hand_world_landmarks,
                                     strict=True):
        pixels = np.array([(p.x * width, p.y * height) for p in points])
        metres = np.array([(p.x, p.y, p.z) for p in world])
        try:
            ok, rvec, tvec = cv2.solvePnP(metres, pixels, camera.matrix, None, flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:  # landmarks too close together (a tiny hand)
            continue
        if not ok:
            continue
        joints = metres @ cv2.Rodrigues(rvec)[0].T + tvec.ravel()
        vertices, faces = tube_hand(joints)
        cam_t = joints.mean(axis=0)
        box = np.concatenate([pixels.min(axis=0), pixels.max(axis=0)])
        hands.append(Hand(label=handed[0].category_name, box=frozen_array(box), score=handed[0].score,
                          detector="hand", keypoints_3d=frozen_array(joints - cam_t),
                          keypoints_2d=frozen_array(camera.project(joints)), cam_t=frozen_array(cam_t),
                          vertices=frozen_array(vertices - cam_t)))
    return FrameResult(tuple(hands), (width, height), camera), faces


def mesh_picture() -> np.ndarray:
    """test2.png (halved) with the tube hands drawn as meshes, a legend and the side view."""
    img = cv2.imread(str(IMAGES / "test2.png"))
    img = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    result, faces = tube_hands(img)
    return draw(img, result, faces=faces, legend=True, side_view=True)


def rerun_recording(path: Path, frames: int = 30) -> None:
    """A Rerun recording of a 30-frame clip made from test2.png (slowly zooming and turning, 10 fps), its tube
    hands logged by ``hamer run --rerun``'s writer."""
    from hamer.formats.rerun import RerunWriter
    from hamer.outputs import Frame

    photo = cv2.imread(str(IMAGES / "test2.png"))
    with RerunWriter(path, None) as writer:
        for i in range(frames):
            turn = cv2.getRotationMatrix2D((800, 845), 10.0 * np.sin(i / 6), 0.5 * (1 + 0.2 * i / frames))
            turn[:, 2] -= (400, 422)  # the photo's centre to the frame's
            img = cv2.warpAffine(photo, turn, (800, 845), borderMode=cv2.BORDER_REPLICATE)
            result, faces = tube_hands(img)
            writer.faces = faces
            writer.add(Frame("clip", i, i / 10, result), img)


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "hamer", "run", str(IMAGES / "test5.jpeg"), "--bbox-only", "--overlay",
                        "--quiet", "--out", out], check=True)
        shutil.copy(Path(out) / "test5.overlay.jpg", DOCS / "overlay_bbox_only.jpg")
    img = cv2.imread(str(IMAGES / "test4.jpg"))
    with HandDetector(DetectorOptions(pose_task_path=None)) as detector:
        detections = detector.detect(img)
    zoom = 2.0  # drawn on the image enlarged, so that the small hands show
    hands = [Hand.from_detection(d).replace(box=d.box * zoom, keypoints_2d=d.landmarks * zoom) for d in detections]
    big = cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(DOCS / "overlay_skeleton.jpg"), draw_hands(big, hands)[640:1120, 300:1240], JPEG)
    cv2.imwrite(str(DOCS / "overlay_mesh.jpg"), mesh_picture(), JPEG)
    if len(sys.argv) > 1:  # python docs/make_pictures.py FILE.rrd: also the recording and the viewer's picture
        rerun_recording(Path(sys.argv[1]))
        viewer_screenshot(Path(sys.argv[1]), DOCS / "rerun_viewer.jpg")


def viewer_screenshot(recording: Path, path: Path) -> None:
    """Rerun's viewer on ``recording`` in a virtual X display (Xvfb; Vulkan on Mesa's software rasteriser,
    llvmpipe: its OpenGL lacks a texture format the viewer needs), by ``rerun --screenshot-to``, as a JPEG."""
    display = ":57"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x900x24"], stderr=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as folder:
            png = Path(folder) / "viewer.png"
            subprocess.run(["rerun", str(recording), "--renderer", "vulkan", "--window-size", "1400x800",
                            "--screenshot-to", str(png)], env={**os.environ, "DISPLAY": display}, check=True,
                           capture_output=True, timeout=300)
            shot = cv2.imread(str(png))
            cv2.imwrite(str(path), cv2.resize(shot, (1400, 800), interpolation=cv2.INTER_AREA), JPEG)
    finally:
        xvfb.terminate()
        xvfb.wait()


if __name__ == "__main__":
    main()
