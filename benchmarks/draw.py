"""Time of ``hamer.draw`` per hand at 1280x720, beside the network's time per hand.

Meshes: a closed, lumpy ellipsoid of 1,536 triangles (MANO has 1,538; the repository has no real MANO, and the
synthetic one's random triangles span the whole hand, which no real mesh does), hand-shaped (8 x 10 x 3 cm) and
placed so that its box is 150, 300 or 600 pixels tall in the 1280x720 image of HaMeR's default camera (focal
25,000 px). Each figure is the median of ``--repeats`` calls after a warm-up: ``rasterize`` alone (z-buffer), the
whole ``draw(style="mesh")`` of one hand (shading, compositing, box and label), two overlapping hands, the side
view, and the skeleton style for comparison. The network: the small synthetic model (``tiny``, random weights)
timed here (wall time), per hand, through ``HAMER.predict`` with a user box (crop + network + MANO); ViT-H's
figure is quoted from benchmarks/results/bench.md (same machine type).

``--baseline DIR`` first times another source tree's ``hamer`` (e.g. a checkout of the main branch) the same way
in a child process, just before this tree's, for a before/after table on the same machine and load.

Run: ``python benchmarks/draw.py [--baseline DIR]`` (about a minute); writes benchmarks/results/draw.md and
draw.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv[:-1] else ROOT  # whose hamer is timed
sys.path[:0] = [str(CODE), str(ROOT / "tests")]

from hamer import HAMER, draw  # noqa: E402
from hamer.raster import rasterize  # noqa: E402
from hamer.results import Camera, FrameResult, Hand, frozen_array  # noqa: E402

from bench import machine  # noqa: E402

SIZE = (1280, 720)
VIT_H_S_PER_HAND = 1.24  # benchmarks/results/bench.md, 'default-cpu', b=1, AMD EPYC (family/model 25/17)


def hand_mesh(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) metres and (1536, 3) triangles: a lumpy ellipsoid 8 x 10 x 3 cm centred at the origin."""
    nu, nv = 32, 25
    th = np.linspace(0, np.pi, nv)
    ph = np.linspace(0, 2 * np.pi, nu, endpoint=False)
    v = np.stack([np.sin(th)[:, None] * np.cos(ph), np.cos(th)[:, None] * np.ones_like(ph),
                  np.sin(th)[:, None] * np.sin(ph)], -1).reshape(-1, 3)
    v *= np.random.default_rng(seed).uniform(0.8, 1.0, size=(len(v), 1))
    faces = [(i * nu + j, i * nu + (j + 1) % nu, (i + 1) * nu + j) for i in range(nv - 1) for j in range(nu)]
    faces += [(i * nu + (j + 1) % nu, (i + 1) * nu + (j + 1) % nu, (i + 1) * nu + j)
              for i in range(nv - 1) for j in range(nu)]
    return v * [0.04, 0.05, 0.015], np.array(faces)


def hand(label: str, vertices: np.ndarray, cam_t: np.ndarray, camera: Camera) -> Hand:
    points = vertices + cam_t
    uv = camera.project(points)
    box = np.concatenate([uv.min(axis=0), uv.max(axis=0)])
    return Hand(label=label, box=frozen_array(box), score=0.95, detector="hand",
                keypoints_3d=frozen_array(np.zeros((21, 3))), keypoints_2d=frozen_array(uv[:21]),
                cam_t=frozen_array(cam_t), vertices=frozen_array(vertices))


def median_ms(fn, repeats: int, clock=time.process_time) -> float:
    """Median milliseconds of ``fn`` by ``clock``: CPU time of this process by default (drawing is one thread;
    on a shared machine, wall time also counts the other processes' turns)."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1e3 * statistics.median(times)


def faults_per_call(fn, repeats: int) -> float:
    """Minor page faults per call of ``fn`` (fresh pages mapped for its arrays; glibc keeps freed big blocks only
    once its thresholds have grown, so a fresh process pays more of them)."""
    fn()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / repeats


def network_s_per_hand(repeats: int) -> float:
    """Seconds per hand of the small synthetic model (crop, network, MANO) through HAMER.predict with a box."""
    from synthetic import make_data_dir

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "_DATA"
        make_data_dir(data)
        img = np.random.default_rng(0).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        with HAMER(device="cpu", data_dir=str(data), backend="torch") as model:
            box = {"Right": [500.0, 200.0, 800.0, 500.0]}
            return median_ms(lambda: model.predict(img, box), repeats, time.perf_counter) / 1e3


def measure(pixels: int, covered: int, vertices: np.ndarray, faces: np.ndarray, right: Hand, one: FrameResult,
            two: FrameResult, img: np.ndarray, camera: Camera, repeats: int) -> dict:
    """The row of one hand size."""
    return {
        "box_px": pixels,
        "covered_px": covered,
        "rasterize_ms": median_ms(lambda: rasterize(vertices + right.cam_t, faces, camera, SIZE), repeats),
        "draw_mesh_1_hand_ms": median_ms(lambda: draw(img, one, faces=faces), repeats),
        "draw_mesh_1_hand_wall_ms": median_ms(lambda: draw(img, one, faces=faces), repeats, time.perf_counter),
        "draw_mesh_1_hand_page_faults": faults_per_call(lambda: draw(img, one, faces=faces), repeats),
        "draw_mesh_2_hands_ms": median_ms(lambda: draw(img, two, faces=faces), repeats),
        "draw_mesh_side_view_1_hand_ms": median_ms(lambda: draw(img, one, faces=faces, side_view=True), repeats),
        "draw_skeleton_1_hand_ms": median_ms(lambda: draw(img, one, "skeleton"), repeats),
        "copy_image_ms": median_ms(lambda: img.copy(), repeats),
    }


def rows_of(camera: Camera, vertices: np.ndarray, faces: np.ndarray, img: np.ndarray, repeats: int) -> list[dict]:
    """The rows of the three hand sizes."""
    rows = []
    for pixels in (150, 300, 600):
        z = camera.fy * 0.10 / pixels  # the mesh is 10 cm tall
        right = hand("Right", vertices, np.array([0.0, 0.0, z]), camera)
        left = hand("Left", vertices * [-1, 1, 1], np.array([0.3 * 0.08 * z / 0.1, 0.0, z * 1.1]), camera)
        one, two = FrameResult((right,), SIZE, camera), FrameResult((right, left), SIZE, camera)
        covered = int((rasterize(vertices + right.cam_t, faces, camera, SIZE).face >= 0).sum())
        rows.append(measure(pixels, covered, vertices, faces, right, one, two, img, camera, repeats))
    return rows


def baseline_rows(code: Path, repeats: int) -> list[dict]:
    """The rows of another source tree's ``hamer``, timed by this script in a child process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rows.json"
        subprocess.run([sys.executable, __file__, "--code", str(code), "--repeats", str(repeats), "--rows-to",
                        str(out)], check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="also time this source tree's hamer (before/after)")
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)  # read at import
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)  # a child: the rows as JSON, nothing else
    args = parser.parse_args()
    camera = Camera.hamer_default(SIZE)
    vertices, faces = hand_mesh()
    img = np.random.default_rng(1).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    if args.rows_to:
        args.rows_to.write_text(json.dumps(rows_of(camera, vertices, faces, img, args.repeats)))
        return
    load = os.getloadavg()
    before = baseline_rows(args.baseline.resolve(), args.repeats) if args.baseline else None
    rows = rows_of(camera, vertices, faces, img, args.repeats)
    tiny = network_s_per_hand(5)
    info = machine()
    result = {"machine": info, "load_average_before_after": [load[0], os.getloadavg()[0]], "image": list(SIZE),
              "triangles": len(faces), "repeats": args.repeats, "rows": rows,
              "network_s_per_hand": {"tiny (synthetic, torch)": tiny, "ViT-H default-cpu (bench.md)": VIT_H_S_PER_HAND}}
    if before is not None:
        result["baseline"] = {"code": str(args.baseline), "rows": before}
    out = ROOT / "benchmarks" / "results"
    (out / "draw.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Machine: {info['cpu']} (family/model {info['cpu_family_model']}), {info['cores']} cores; shared with other "
        f"work, so read ratios. Image {SIZE[0]}x{SIZE[1]}, mesh of {len(faces)} triangles (hand-sized lumpy "
        f"ellipsoid, see benchmarks/draw.py), median of {args.repeats} calls, milliseconds of CPU time (one thread; "
        f"wall time for one column). Load average (1 min) before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}.",
        "",
        "| hand box (px tall) | pixels covered | rasterize | draw mesh, 1 hand | (wall) | draw mesh, 2 hands | "
        "mesh + side view, 1 hand | draw skeleton, 1 hand | image copy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("rasterize_ms", "draw_mesh_1_hand_ms", "draw_mesh_1_hand_wall_ms", "draw_mesh_2_hands_ms",
            "draw_mesh_side_view_1_hand_ms", "draw_skeleton_1_hand_ms", "copy_image_ms")
    for r in rows:
        lines.append(f"| {r['box_px']} | {r['covered_px']} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")
    if before is not None:
        lines += ["", f"Before / after: `{args.baseline}` timed the same way in a child process just before this "
                  "tree (same machine, same load), milliseconds of CPU time, and the ratio before / after.", "",
                  "| hand box (px tall) | rasterize before | after | ratio | draw mesh 1 hand before | after | ratio | "
                  "2 hands before | after | ratio | page faults per 1-hand draw before | after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for b, r in zip(before, rows, strict=True):
            cells = [f"{b[k]:.1f} | {r[k]:.1f} | {b[k] / r[k]:.1f}x"
                     for k in ("rasterize_ms", "draw_mesh_1_hand_ms", "draw_mesh_2_hands_ms")]
            faults = f"{b['draw_mesh_1_hand_page_faults']:.0f} | {r['draw_mesh_1_hand_page_faults']:.0f}"
            lines.append(f"| {r['box_px']} | " + " | ".join(cells) + f" | {faults} |")
    typical = rows[1]["draw_mesh_1_hand_ms"]
    lines += ["", f"Network per hand: small synthetic model {tiny * 1e3:.0f} ms (torch, measured here); ViT-H "
              f"{VIT_H_S_PER_HAND:.2f} s (ONNX Runtime fp32, benchmarks/results/bench.md). Drawing a 300-px hand's "
              f"mesh is {typical / (VIT_H_S_PER_HAND * 1e3) * 100:.1f}% of ViT-H's time per hand."]
    (out / "draw.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
