"""hamer.draw: the z-buffered mesh overlay (mesh_render.py, raster.py), the styles, legend and side view."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import hamer
from hamer.mesh_render import MESH_COLORS, draw_meshes, hand_triangles, lambert
from hamer.overlay import HAND_EDGES, draw_hands
from hamer.results import Camera, FrameResult, Hand, frozen_array

W, H = 320, 240
CAMERA = Camera(400.0, 420.0, 150.0, 125.0)


def sphere(nu: int = 32, nv: int = 25, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """A unit lat-long sphere, its radius made lumpy (not convex) with ``seed``: (N, 3) vertices, (T, 3)
    outward-wound triangles (1536 for the defaults)."""
    th = np.linspace(0, np.pi, nv)
    ph = np.linspace(0, 2 * np.pi, nu, endpoint=False)
    v = np.stack([np.sin(th)[:, None] * np.cos(ph), np.cos(th)[:, None] * np.ones_like(ph),
                  np.sin(th)[:, None] * np.sin(ph)], -1).reshape(-1, 3)
    if seed is not None:
        v *= np.random.default_rng(seed).uniform(0.7, 1.0, size=(len(v), 1))
    faces = []
    for i in range(nv - 1):
        for j in range(nu):
            a, b = i * nu + j, i * nu + (j + 1) % nu
            faces += [(a, b, a + nu), (b, b + nu, a + nu)]
    return v, np.array(faces)


def mesh_hand(label: str, vertices: np.ndarray, cam_t, box=(0, 0, 1, 1)) -> Hand:
    return Hand(label=label, box=frozen_array(box), score=0.9, detector="hand",
                keypoints_3d=frozen_array(np.zeros((21, 3))), keypoints_2d=frozen_array(np.full((21, 2), 5.0)),
                cam_t=frozen_array(cam_t), vertices=frozen_array(vertices))


def project(points: np.ndarray, camera: Camera) -> np.ndarray:
    return np.stack([camera.fx * points[:, 0] / points[:, 2] + camera.cx,
                     camera.fy * points[:, 1] / points[:, 2] + camera.cy], axis=1)


def test_silhouette_is_the_union_of_the_projected_triangles():
    v, faces = sphere()
    v = v * [0.05, 0.03, 0.04]
    cam_t = np.array([0.01, 0.0, 0.3])
    drawn = draw_meshes(np.zeros((H, W, 3), np.uint8), [mesh_hand("Right", v, cam_t)], faces, CAMERA, alpha=1.0)
    mask = drawn.any(axis=2)
    expected = np.zeros((H, W), np.uint8)
    corners = project(v + cam_t, CAMERA)[faces]
    for tri in corners:  # pixel centres at integers, as OpenCV's; 8 bits of sub-pixel precision
        cv2.fillPoly(expected, [np.round(tri * 256).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=8)
    expected = expected.astype(bool)
    # fillPoly also fills the pixels an edge passes through, up to a pixel beyond the centre-inside rule: the
    # drawn silhouette lies within a pixel of it outwards, and covers all of it but a 2-pixel rim (thin notches)
    assert expected.sum() > 5000
    assert not (mask & ~cv2.dilate(expected.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)).any()
    assert not (cv2.erode(expected.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask).any()
    assert (mask & expected).sum() / (mask | expected).sum() > 0.97


def flat_triangle(z_left: float, z_right: float) -> tuple[np.ndarray, np.ndarray]:
    """A big triangle in the camera frame over the image centre, its depth going from ``z_left`` to ``z_right``."""
    pixels = np.array([[40.0, 20.0], [280.0, 20.0], [160.0, 230.0]])
    xs = (pixels[:, 0] - 40.0) / 240.0
    z = z_left + (z_right - z_left) * xs
    points = np.stack([(pixels[:, 0] - CAMERA.cx) * z / CAMERA.fx, (pixels[:, 1] - CAMERA.cy) * z / CAMERA.fy, z], 1)
    return points, np.array([[0, 1, 2]])


def side_of(pixel: np.ndarray) -> str:
    """Which side's mesh colour (the hue of ``pixel``, shading aside) a BGR pixel has."""
    ratios = {side: np.dot(pixel, c) / np.linalg.norm(c) / max(np.linalg.norm(pixel), 1e-9)
              for side, c in MESH_COLORS.items()}
    return max(ratios, key=ratios.get)


@pytest.mark.parametrize("near_side", ["Right", "Left"])
def test_the_nearer_hand_wins_where_two_overlap(near_side):
    v, faces = sphere()
    v = v * 0.04
    far_side = "Left" if near_side == "Right" else "Right"
    near = mesh_hand(near_side, v, [0.0, 0.0, 0.5])
    far = mesh_hand(far_side, v * [-1, 1, 1], [0.03, 0.0, 0.6])  # a left mesh mirrored, as HaMeR's are
    for hands in ([near, far], [far, near]):  # the order of the hands does not matter
        out = draw_meshes(np.zeros((H, W, 3), np.uint8), hands, faces, CAMERA)
        overlap = project(np.array([[0.015, 0.0, 0.46]]), CAMERA)[0].round().astype(int)
        only_far = project(np.array([[0.065, 0.0, 0.6]]), CAMERA)[0].round().astype(int)
        assert side_of(out[overlap[1], overlap[0]].astype(float)) == near_side
        assert side_of(out[only_far[1], only_far[0]].astype(float)) == far_side


def test_intersecting_triangles_are_resolved_per_pixel():
    """A flat triangle at 1 m and a tilted one from 0.8 m (left) to 1.2 m (right): each is in front on its half,
    which no ordering of whole triangles (painter's algorithm) can draw."""
    flat, tri = flat_triangle(1.0, 1.0)
    tilted, _ = flat_triangle(0.8, 1.2)
    hands = [mesh_hand("Right", flat, [0, 0, 0]), mesh_hand("Left", tilted, [0, 0, 0])]
    out = draw_meshes(np.zeros((H, W, 3), np.uint8), hands, tri, CAMERA)
    assert side_of(out[60, 100].astype(float)) == "Left"  # left half: the tilted one is nearer
    assert side_of(out[60, 220].astype(float)) == "Right"
    out = draw_meshes(np.zeros((H, W, 3), np.uint8), hands[::-1], tri, CAMERA)
    assert side_of(out[60, 100].astype(float)) == "Left" and side_of(out[60, 220].astype(float)) == "Right"


def test_lambert_is_darker_as_the_face_turns_from_the_light():
    angles = np.radians(np.arange(0, 90, 5))
    normals = np.stack([np.sin(angles), np.zeros_like(angles), -np.cos(angles)], 1)
    shade = lambert(normals, np.tile([0.0, 0.0, -2.0], (len(angles), 1)))
    assert shade[0] == pytest.approx(1.0) and (np.diff(shade) < 0).all() and shade[-1] > 0.3
    # drawn: a triangle facing the camera is brighter than the same one tilted 60 degrees about the vertical
    facing, tri = flat_triangle(1.0, 1.0)
    centre = facing.mean(axis=0)
    a = np.radians(60)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    tilted = (facing - centre) @ rot.T + centre
    bright = [draw_meshes(np.zeros((H, W, 3), np.uint8), [mesh_hand("Right", v, [0, 0, 0])], tri, CAMERA)
              for v in (facing, tilted)]
    centre_px = project(centre[None], CAMERA)[0].round().astype(int)
    assert bright[0][centre_px[1], centre_px[0]].sum() > bright[1][centre_px[1], centre_px[0]].sum() * 1.5


def test_left_hands_take_the_reversed_winding_so_normals_point_out():
    v, faces = sphere(seed=None)
    for label, verts in (("Right", v), ("Left", v * [-1, 1, 1])):
        corners = verts[hand_triangles(mesh_hand(label, verts, [0, 0, 1]), faces)]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        outward = np.einsum("ij,ij->i", normals, corners.mean(axis=1))
        assert (outward[np.linalg.norm(normals, axis=1) > 1e-9] > 0).all(), label


@pytest.mark.parametrize("cam_t", [[0, 0, -0.5], [0, 0, 0.01], [0, 0, 0.0], [0.15, 0.1, 0.3], [-5, -5, 0.2]])
def test_a_mesh_behind_the_camera_or_off_the_image_draws(cam_t):
    v, faces = sphere()
    v = v * 0.05
    img = np.full((H, W, 3), 90, np.uint8)
    result = FrameResult((mesh_hand("Right", v, cam_t, box=(10, 10, 60, 60)),), (W, H), CAMERA)
    out = hamer.draw(img, result, faces=faces)
    assert out.shape == img.shape and out.dtype == np.uint8
    boxes = hamer.draw(img, result, "boxes")
    if cam_t[2] < -0.05 or cam_t[0] < -1:  # wholly behind the camera / off the image: the boxes alone
        np.testing.assert_array_equal(out, boxes)
    else:  # in part in front, or in part on the image: some of it drawn
        assert (out != boxes).any()


def test_styles_and_their_errors():
    v, faces = sphere()
    hand = mesh_hand("Left", v * 0.05, [0, 0, 0.4], box=(100, 80, 200, 170))
    result = FrameResult((hand,), (W, H), CAMERA)
    img = np.full((H, W, 3), 40, np.uint8)
    with pytest.raises(ValueError, match="mesh, skeleton, boxes"):
        hamer.draw(img, result, "wireframe")
    with pytest.raises(ValueError, match="faces"):
        hamer.draw(img, result)
    with pytest.raises(ValueError, match="side_view"):
        hamer.draw(img, result, "skeleton", side_view=True)
    with pytest.raises(ValueError, match="uint8"):
        hamer.draw(img.astype(np.float32), result, "boxes")
    np.testing.assert_array_equal(hamer.draw(img, result, "skeleton"), draw_hands(img, [hand]))
    boxes = hamer.draw(img, result, "boxes")
    assert (boxes[120, 150] == 40).all()  # inside the box: untouched
    mesh = hamer.draw(img, result, faces=faces)
    assert side_of(mesh[125, 150].astype(float)) == "Left"
    half = hamer.draw(img, result, faces=faces, alpha=0.5)
    np.testing.assert_allclose(half[125, 150].astype(float), (mesh[125, 150].astype(float) - 40 * 0.15) / 0.85 * 0.5
                               + 20, atol=2)
    assert (hamer.draw(img, result, faces=faces, legend=True)[:20, :20] != mesh[:20, :20]).any()
    assert (img == 40).all()  # the input is not drawn on


def test_side_view_turns_the_mesh_about_the_vertical():
    v, faces = sphere(seed=None)
    hand = mesh_hand("Right", v * [0.08, 0.02, 0.01], [0, 0, 0.4])  # long along x, thin along z
    out = hamer.draw(np.zeros((H, W, 3), np.uint8), FrameResult((hand,), (W, H), CAMERA), faces=faces,
                     side_view=True)
    assert out.shape == (H, 2 * W, 3)
    front = out[:, :W].any(axis=2)
    panel = out[:, W:]
    side = (panel != 255).any(axis=2)
    assert (panel[0] == 255).all()  # white around the mesh
    width = lambda m: np.ptp(np.nonzero(m.any(axis=0))[0])  # noqa: E731
    assert width(front) > 140 and width(side) < width(front) / 4  # 8 cm across -> 1 cm deep seen from the side


def test_skeleton_bones_start_at_the_openpose_joints():
    assert HAND_EDGES == ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
                          (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))


def test_raster_depth_is_the_perspective_correct_depth_of_the_nearest_triangle():
    from hamer.raster import rasterize

    tilted, tri = flat_triangle(0.8, 1.2)
    flat, _ = flat_triangle(1.0, 1.0)
    raster = rasterize(np.concatenate([flat, tilted]), np.array([[0, 1, 2], [3, 4, 5]]), CAMERA, (W, H))
    x0, y0 = raster.origin
    for x, y in ((100, 60), (220, 60), (160, 150)):
        pixels = project(tilted, CAMERA)  # the pixel's barycentric weights in the image, then 1/z interpolated
        m = np.vstack([pixels.T, np.ones(3)])
        weights = np.linalg.solve(m, [x, y, 1.0])
        z_tilted = 1.0 / np.dot(weights, 1.0 / tilted[:, 2])
        expected = min(z_tilted, 1.0)
        assert raster.depth[y - y0, x - x0] == pytest.approx(expected, rel=1e-5)
        assert raster.face[y - y0, x - x0] == (1 if z_tilted < 1.0 else 0)


def test_hamer_draw_takes_the_models_triangles(data_dir):
    """HAMER.draw: the last prediction's meshes with the model's own MANO triangles (synthetic model: random)."""
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with hamer.HAMER(device="cpu", data_dir=str(data_dir), backend="torch") as model:
        result = model.predict(img, {"Right": [100, 60, 220, 180]})
        assert model.faces.shape == (1538, 3)
        drawn = model.draw(img)
    np.testing.assert_array_equal(drawn, hamer.draw(img, result, faces=model.faces))
    assert (drawn != hamer.draw(img, result, "boxes")).any()


def plain_zbuffer(vertices: np.ndarray, triangles: np.ndarray, camera: Camera, size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest triangle at every pixel centre of the image, by a loop over the triangles in order (the first
    keeps a tie), each tested at every centre with its edges' signed distances: (H, W) face (-1: none), depth, and
    where the answer hangs on rounding (a centre within 1e-6 px of an edge, or two depths within 1e-5)."""
    width, height = size
    p = np.stack(np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float)), -1)
    face, inv = np.full((height, width), -1), np.zeros((height, width))
    ambiguous = np.zeros((height, width), bool)
    uv = project(vertices, camera)
    cross = lambda u, v: u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]  # noqa: E731
    for i, tri in enumerate(triangles):
        corners, z = uv[tri], vertices[tri, 2]
        area = cross(corners[1] - corners[0], corners[2] - corners[0])
        # weights[k]: the signed area opposite corner k, over the whole (barycentric); dist: pixels from that edge
        weights = np.stack([cross(corners[(k + 2) % 3] - corners[(k + 1) % 3], p - corners[(k + 1) % 3]) / area
                            for k in range(3)], -1)
        dist = weights * abs(area) / np.linalg.norm(corners[[2, 0, 1]] - corners[[1, 2, 0]], axis=1)
        inside = (weights >= 0).all(-1)
        ambiguous |= (dist >= -1e-6).all(-1) & ~(dist >= 1e-6).all(-1)
        iz = weights @ (1.0 / z)
        ambiguous |= inside & (face >= 0) & (np.abs(iz - inv) <= 1e-5 * iz)
        nearer = inside & (iz > inv)
        face[nearer], inv[nearer] = i, iz[nearer]
    return face, np.where(face >= 0, 1.0 / np.where(face >= 0, inv, 1.0), np.inf), ambiguous


def test_rasterize_equals_a_plain_zbuffer_on_random_triangles():
    """Random intersecting triangles of both windings over a 400x300 image, enough box pixels for several groups:
    the rasteriser's nearest triangle and depth are the plain z-buffer's wherever rounding cannot decide."""
    from hamer.raster import rasterize

    rng = np.random.default_rng(7)
    size, camera = (400, 300), Camera(380.0, 360.0, 190.0, 160.0)
    count = 80
    centres = rng.uniform([-60, -50], [460, 350], (count, 1, 2)) + rng.normal(0, 70, (count, 3, 2))
    z = rng.uniform(0.5, 3.0, (count, 3))
    vertices = np.stack([((centres[..., 0] - camera.cx) * z / camera.fx).ravel(),
                         ((centres[..., 1] - camera.cy) * z / camera.fy).ravel(), z.ravel()], 1)
    triangles = np.arange(3 * count).reshape(count, 3)
    face, depth, ambiguous = plain_zbuffer(vertices, triangles, camera, size)
    raster = rasterize(vertices, triangles, camera, size)
    (x0, y0), (h, w) = raster.origin, raster.face.shape
    got_face, got_depth = np.full(face.shape, -1), np.full(face.shape, np.inf, np.float32)
    got_face[y0:y0 + h, x0:x0 + w], got_depth[y0:y0 + h, x0:x0 + w] = raster.face, raster.depth
    assert (face >= 0).mean() > 0.5 and ambiguous.mean() < 0.01
    sure = ~ambiguous
    np.testing.assert_array_equal(got_face[sure], face[sure])
    drawn = sure & (face >= 0)
    np.testing.assert_allclose(got_depth[drawn], depth[drawn], rtol=1e-5)
    assert np.isinf(got_depth[sure & (face < 0)]).all()


@pytest.mark.parametrize("view", ["flipped", "channels reversed", "every other column"])
def test_drawing_in_place_into_a_view_opencv_cannot_write(view):
    v, faces = sphere()
    hand = mesh_hand("Right", v * 0.05, [0.0, 0.0, 0.4])
    img = np.random.default_rng(3).integers(0, 255, (H, 2 * W, 3), dtype=np.uint8)
    pick = {"flipped": lambda a: a[:, ::-1][:, :W], "channels reversed": lambda a: a[:, :W, ::-1],
            "every other column": lambda a: a[:, ::2]}[view]
    expected = draw_meshes(np.ascontiguousarray(pick(img)), [hand], faces, CAMERA)
    target = img.copy()
    out = draw_meshes(pick(target), [hand], faces, CAMERA, inplace=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pick(target), expected)  # drawn into the caller's array
    assert (expected != pick(img)).any()
    frozen = img.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        draw_meshes(frozen, [hand], faces, CAMERA, inplace=True)
