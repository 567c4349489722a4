"""A z-buffered triangle rasteriser in numpy: which triangle is nearest at each pixel of an image.

No OpenGL and no display. Pixel centres are at integer coordinates (OpenCV's convention, as in
:mod:`hamer.results`); a pixel is covered by a triangle when its centre lies inside it or on its edge. Depth is
interpolated perspective-correctly (``1/z`` is linear in the image) and the nearest triangle wins per pixel, so
meshes that intersect, and several meshes in one call, are drawn right.

Triangles are rasterised row by row, vectorised over all triangles and rows at once: each row's span of covered
pixel centres comes from the triangle's three edge half-planes, and every pixel of every span is one entry of a
``np.minimum.at`` z-buffer over int64 keys that pack the depth (the bits of float32 ``1/z``, which as integers are
monotone for positive values) above the triangle's index. Work and memory grow with the pixels covered, the
triangles taken in groups whose boxes hold about 260,000 pixels (the temporary arrays of a group stay a few
megabytes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .results import Camera

NEAR = 1e-3  # metres: a triangle with a vertex nearer than this (or behind the camera) is not drawn
_CHUNK_PIXELS = 1 << 18  # triangles are rasterised in groups whose boxes hold about this many pixels (memory)
_FAR_PIXELS = 1e7  # a corner farther than this from the image is a triangle nearly edge-on to the camera: skipped
_EMPTY = np.iinfo(np.int64).max
_INF_BITS = 0x7F800000  # float32 +inf's bits: inf minus the bits of a positive 1/z grows with z (keys: nearest least)
_HIGH = 1 if sys.byteorder == "little" else 0  # the high 32-bit word of an int64 seen as two int32


@dataclass(frozen=True)
class Raster:
    """The nearest triangle of each pixel of a box of the image at ``origin`` (x, y) pixels: ``face`` (h, w) int32
    index into the triangles, -1 where none; ``depth`` (h, w) float32 metres along the camera's z (inf where none).
    The box holds every covered pixel (empty when none is). The two share one buffer (strided views of it)."""

    origin: tuple[int, int]
    face: np.ndarray
    depth: np.ndarray


def rasterize(vertices: np.ndarray, triangles: np.ndarray, camera: Camera, size: tuple[int, int],
              near: float = NEAR) -> Raster:
    """Rasterise ``triangles`` (T, 3) vertex indices of ``vertices`` (N, 3) camera metres, seen by ``camera`` on
    an image of ``size`` (W, H) pixels. Triangles with a vertex at ``z <= near``, not finite, or nearly edge-on
    (a corner projected beyond 1e7 pixels) are skipped; the others are clipped to the image."""
    width, height = size
    tri = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    corners, inv_z, ids = _projected(np.asarray(vertices, dtype=np.float64).reshape(-1, 3), tri, camera, near)
    if not len(ids) or width <= 0 or height <= 0:
        return Raster((0, 0), np.full((0, 0), -1, np.int32), np.full((0, 0), np.inf, np.float32))
    low, high = np.ceil(corners.min(axis=(0, 1))), np.floor(corners.max(axis=(0, 1)))
    x0, y0 = (int(max(v, 0)) for v in low)
    x1, y1 = int(min(high[0], width - 1)), int(min(high[1], height - 1))
    if x1 < x0 or y1 < y0:
        return Raster((0, 0), np.full((0, 0), -1, np.int32), np.full((0, 0), np.inf, np.float32))
    box = (x0, y0, x1, y1)
    zbuf = np.full((y1 - y0 + 1) * (x1 - x0 + 1), _EMPTY, dtype=np.int64)
    lo = np.maximum(np.ceil(corners[:, :, 1].min(axis=1)), y0).astype(np.int64)  # rows of each triangle
    rows = np.maximum(np.minimum(np.floor(corners[:, :, 1].max(axis=1)), y1).astype(np.int64) - lo + 1, 0)
    widths = np.clip(np.ptp(corners[:, :, 0], axis=1) + 1, 1, x1 - x0 + 1)
    cost = np.cumsum(rows * widths)
    start = 0
    while start < len(ids):  # groups of about _CHUNK_PIXELS box pixels, a triangle at least
        done = cost[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(cost, done + _CHUNK_PIXELS, side="right")))
        _spans(zbuf, corners[start:end], inv_z[start:end], ids[start:end], lo[start:end], rows[start:end], box)
        start = end
    # decoded in place: face and depth are the z-buffer's two 32-bit words of each pixel (strided views)
    words = zbuf.view(np.int32).reshape(y1 - y0 + 1, x1 - x0 + 1, 2)
    face, depth = words[:, :, 1 - _HIGH], words[:, :, _HIGH]  # _EMPTY's low word is -1
    np.subtract(_INF_BITS, depth, out=depth)  # the bits of float32 1/z
    depth = depth.view(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # the empty pixels' keys are no depth
        np.divide(np.float32(1.0), depth, out=depth)
    depth[face < 0] = np.inf
    return Raster((x0, y0), face, depth)


def _projected(v: np.ndarray, tri: np.ndarray, camera: Camera, near: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T', 3, 2) pixel corners, (T', 3) inverse depths and (T',) indices of the triangles in front of ``near``
    whose corners are finite and within :data:`_FAR_PIXELS` of the image (degenerate ones are skipped later)."""
    z = v[:, 2]
    front = z > near
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(front, 1.0 / np.where(front, z, 1.0), np.nan)
        uv = v[:, :2] * inv[:, None] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    corners, inv_z = uv[tri], inv[tri]
    ok = np.isfinite(corners).all(axis=(1, 2)) & np.isfinite(inv_z).all(axis=1)
    ok &= (np.abs(corners) < _FAR_PIXELS).all(axis=(1, 2))
    ids = np.nonzero(ok)[0]
    corners, inv_z = corners[ids], inv_z[ids]
    return corners, inv_z, ids


def _spans(zbuf: np.ndarray, corners: np.ndarray, inv_z: np.ndarray, ids: np.ndarray, lo: np.ndarray,
           rows: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Rasterise triangles row by row: each row's span of covered pixel centres from the three edges'
    half-planes, then every pixel of the spans into the z-buffer."""
    x0, y0, x1, _ = box
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    sign = np.sign(area)
    # inside: ex * x + ey * y + e0 >= 0 for each edge p -> q (interior on the left for positive area); (3, T)
    # arrays, an edge a row, so that the arithmetic per (triangle, row) below runs along long rows
    ex = np.stack([p[:, 1] - q[:, 1] for p, q in ((a, b), (b, c), (c, a))]) * sign
    ey = np.stack([q[:, 0] - p[:, 0] for p, q in ((a, b), (b, c), (c, a))]) * sign
    e0 = -(ex * np.stack([a[:, 0], b[:, 0], c[:, 0]]) + ey * np.stack([a[:, 1], b[:, 1], c[:, 1]]))
    # 1/z is affine in the image: inv_z = dx * x + dy * y + d0
    with np.errstate(divide="ignore", invalid="ignore"):
        du, dv = inv_z[:, 1] - inv_z[:, 0], inv_z[:, 2] - inv_z[:, 0]
        dx = (du * (c[:, 1] - a[:, 1]) - dv * (b[:, 1] - a[:, 1])) / area
        dy = (dv * (b[:, 0] - a[:, 0]) - du * (c[:, 0] - a[:, 0])) / area
    d0 = inv_z[:, 0] - dx * a[:, 0] - dy * a[:, 1]
    good = area != 0
    rows = np.where(good, rows, 0)
    # one entry per (triangle, row)
    t = np.repeat(np.arange(len(ids)), rows)
    y = (np.arange(len(t)) + np.repeat(lo - (np.cumsum(rows) - rows), rows)).astype(np.float64)
    ext = ex[:, t]
    bound = -(ey[:, t] * y + e0[:, t])  # ex * x >= bound per edge
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = bound / ext
    low, high = np.where(ext > 0, limit, -np.inf), np.where(ext < 0, limit, np.inf)
    lower = np.maximum(np.maximum(low[0], low[1]), low[2])
    upper = np.minimum(np.minimum(high[0], high[1]), high[2])
    shut = (ext == 0) & (bound > 0)  # an edge parallel to the row that excludes it
    blocked = shut[0] | shut[1] | shut[2]
    left = np.maximum(np.ceil(lower), x0)
    right = np.minimum(np.floor(upper), x1)
    count = np.where(blocked | ~(right >= left), 0, right - left + 1).astype(np.int64)  # NaN bounds: no span
    left = np.where(count > 0, left, x0)
    total = int(count.sum())
    if total == 0:
        return
    # one entry per pixel, gathering its row's values: the step along the row's span, 1/z, the key
    span = np.repeat(np.arange(len(t)), count)
    step = np.arange(total, dtype=np.int64)
    step -= np.take(np.cumsum(count) - count, span)
    inv = np.take(dx[t].astype(np.float32), span)
    inv *= step.astype(np.float32)
    inv += np.take((dx[t] * left + dy[t] * y + d0[t]).astype(np.float32), span)
    np.maximum(inv, np.float32(1e-30), out=inv)  # rounding at a span's end cannot make it behind the camera
    key = np.empty((total, 2), np.int32)  # the int64 keys as their two 32-bit words
    np.subtract(_INF_BITS, inv.view(np.int32), out=key[:, _HIGH])
    key[:, 1 - _HIGH] = np.take(ids.astype(np.int32)[t], span)
    step += np.take((y.astype(np.int64) - y0) * (x1 - x0 + 1) + left.astype(np.int64) - x0, span)  # pixel index
    np.minimum.at(zbuf, step, key.view(np.int64).reshape(-1))
