"""Batched vs one image at a time: which outputs differ, and by how much, per backend and batch composition.

The hands MediaPipe finds in ``../shared/images`` go through the network (``DATA``: a data folder, e.g. the
full-size synthetic one that ``benchmarks/corpus.py`` writes) one photograph at a time (1-2 crops a call, the
frame-by-frame path: the reference), one crop a call, all in one batch, and in batches of 8; each photograph's hands
are then placed with its own rows, as the corpus engine does. Also the placement's float32 arithmetic against
float64 on the same network outputs. Writes the largest differences as JSON.

Run: ``nice python benchmarks/batch_rounding.py torch|auto DATA OUT.json`` (one process at a time with ViT-H:
about 4 GB; torch ~6 minutes on 2 shared cores, ONNX Runtime ~1.5). Results: ``results/batch_rounding.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from hamer.corpus import Options
from hamer.detection import (
    HAND_TASK_PATH,
    POSE_TASK_PATH,
    DetectorOptions,
    HandDetector,
)
from hamer.engines.local import load_reconstructor
from hamer.images import read_image
from hamer.pipeline import Reconstructor, best_per_label, find_hands

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
NETWORK_KEYS = ("pred_keypoints_3d", "pred_vertices", "pred_cam", "global_orient", "hand_pose", "betas")


def photographs(rec: Reconstructor) -> tuple[list, list]:
    """``[(name, img, hands)]`` of the photographs with hands, and their ``(crops, crop params)``."""
    frames = []
    with HandDetector(DetectorOptions(HAND_TASK_PATH, POSE_TASK_PATH, mode="IMAGE")) as det:
        for path in sorted(IMAGES.glob("test*")):
            img = read_image(str(path))
            hands, _ = find_hands(img, detector=det, select=best_per_label)
            if hands:
                frames.append((path.name, img, hands))
    return frames, [rec.prepare(img, hands) for _, img, hands in frames]


def run(rec: Reconstructor, crops: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
    """The network's outputs on ``crops`` in consecutive calls of ``sizes`` crops."""
    outs, start = [], 0
    for size in sizes:
        outs.append(rec.network(crops[start:start + size]))
        start += size
    return {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}


def placed(rec: Reconstructor, frames: list, prep: list, net: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each photograph's hands placed with its own rows of ``net``."""
    hands, start = [], 0
    for (_, img, found), (_, crops) in zip(frames, prep, strict=True):
        rows = {key: v[start:start + len(found)] for key, v in net.items()}
        hands += rec.place(img.shape, found, crops, rows)
        start += len(found)
    return {"keypoints_3d": np.stack([h.keypoints_3d for h in hands]), "cam_t": np.stack([h.cam_t for h in hands]),
            "keypoints_2d": np.stack([h.keypoints_2d for h in hands]),
            "camera_joints": np.stack([h.keypoints_3d + h.cam_t for h in hands])}


def placement_float64_error(rec: Reconstructor, frames: list, prep: list, net: dict[str, np.ndarray]) -> float:
    """Largest relative difference of ``cam_t`` from HaMeR's ``cam_crop_to_full`` in float64 on the same rows."""
    worst, start = 0.0, 0
    for (_, img, hands), (_, crops) in zip(frames, prep, strict=True):
        rows = {key: v[start:start + len(hands)] for key, v in net.items()}
        start += len(hands)
        h, w = img.shape[:2]
        cam = rec.default_camera((w, h))
        pc = rows["pred_cam"].astype(np.float64).copy()
        pc[:, 1] *= np.array([1.0 if x.label == "Right" else -1.0 for x in hands])
        c = np.stack([cr.center for cr in crops]).astype(np.float64)
        bs = np.array([cr.size for cr in crops], np.float64) * pc[:, 0] + 1e-9
        t64 = np.stack([2 * (c[:, 0] - w / 2) / bs + pc[:, 1], 2 * (c[:, 1] - h / 2) / bs + pc[:, 2],
                        2 * cam.fx / bs], 1)
        t32 = np.stack([x.cam_t for x in rec.place(img.shape, hands, crops, rows)])
        worst = max(worst, float((np.abs(t32 - t64) / np.abs(t64)).max()))
    return worst


def main() -> None:
    backend, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rec = load_reconstructor(Options(data=data, backend=backend))
    frames, prep = photographs(rec)
    crops = np.concatenate([p[0] for p in prep])
    n, per_image = len(crops), [len(h) for _, _, h in frames]
    reference = "per image (1-2 crops)"
    compositions = {reference: per_image, "one crop a call": [1] * n, f"all {n} in one batch": [n],
                    "batches of 8": [8] * (n // 8) + ([n % 8] if n % 8 else [])}
    nets = {}
    for name, sizes in compositions.items():
        start = time.perf_counter()
        nets[name] = run(rec, crops, sizes)
        print(name, f"{time.perf_counter() - start:.0f} s", flush=True)
    ref_net = nets[reference]
    ref = placed(rec, frames, prep, ref_net)
    result = {"backend": type(rec.network).__name__, "crops": n, "per_image": per_image, "vs": reference, "rows": {}}
    for name, net in nets.items():
        if name == reference:
            continue
        got = placed(rec, frames, prep, net)
        row = {f"net {key}": float(np.abs(net[key] - ref_net[key]).max()) for key in NETWORK_KEYS}
        row["net pred_cam rel"] = float((np.abs(net["pred_cam"] - ref_net["pred_cam"]) / np.abs(ref_net["pred_cam"])
                                         ).max())
        row.update({key: float(np.abs(v - ref[key]).max()) for key, v in got.items()})
        row["cam_t rel"] = float((np.abs(got["cam_t"] - ref["cam_t"]) / np.abs(ref["cam_t"])).max())
        result["rows"][name] = row
        print(name, json.dumps(row), flush=True)
    result["placement float32 vs float64, cam_t rel"] = placement_float64_error(rec, frames, prep, ref_net)
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
