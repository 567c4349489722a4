#!/usr/bin/env python3
"""Build the offline MediaPipe Tasks bundles in ``hamer/tasks/``.

Recent ``mediapipe`` wheels ship no ``.tflite`` models, and the Tasks API wants
``.task`` bundles. The ``mediapipe==0.10.21`` wheel still ships the legacy
"solutions" models; this script installs that wheel into a throw-away venv
(its metadata writer needs a native module that newer wheels lack), and in
that venv:

* ``hand_landmarker.task``: ``palm_detection_full.tflite`` as
  ``hand_detector.tflite`` + ``hand_landmark_full.tflite`` as
  ``hand_landmarks_detector.tflite``, unchanged.
* ``pose_landmarker.task``: ``pose_detection.tflite`` as ``pose_detector.tflite``
  + ``pose_landmark_full.tflite`` as ``pose_landmarks_detector.tflite``, with
  image-input normalization metadata written by MediaPipe's
  ``metadata_writers`` (the Tasks API refuses float inputs without it):
  detector input range [-1, 1] (mean 127.5, std 127.5), landmark model input
  range [0, 1] (mean 0, std 255), as in MediaPipe's pose graphs.

Bundles are written with MediaPipe's ``create_model_asset_bundle`` (stored,
4-byte aligned entries) with fixed timestamps, so reruns are byte-identical.

Usage::

    python tools/make_task_bundles.py [--out-dir hamer/tasks] [--writer-python PY]

``--writer-python`` reuses an interpreter that already has
``mediapipe==0.10.21`` instead of creating a venv (about 1 GB, ~1 min).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

MEDIAPIPE_VERSION = "0.10.21"
REPO_ROOT = Path(__file__).resolve().parents[1]

# bundle name -> {name inside the bundle: (path inside the mediapipe package,
#                 (norm mean, norm std) or None to copy the model unchanged)}
BUNDLES = {
    "hand_landmarker.task": {
        "hand_detector.tflite": ("modules/palm_detection/palm_detection_full.tflite", None),
        "hand_landmarks_detector.tflite": ("modules/hand_landmark/hand_landmark_full.tflite", None),
    },
    "pose_landmarker.task": {
        "pose_detector.tflite": ("modules/pose_detection/pose_detection.tflite", (127.5, 127.5)),
        "pose_landmarks_detector.tflite": ("modules/pose_landmark/pose_landmark_full.tflite", (0.0, 255.0)),
    },
}


def build(out_dir: Path) -> None:
    """Write the bundles to ``out_dir``; runs under ``mediapipe==0.10.21``."""
    import zipfile

    import mediapipe
    from mediapipe.tasks.python.metadata.metadata_writers import (
        metadata_writer,
        model_asset_bundle_utils,
    )

    if mediapipe.__version__ != MEDIAPIPE_VERSION:
        sys.exit(f"need mediapipe=={MEDIAPIPE_VERSION}, found {mediapipe.__version__}")
    package_dir = Path(mediapipe.__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for bundle, members in BUNDLES.items():
        models = {}
        for name, (source, norm) in members.items():
            model = (package_dir / source).read_bytes()
            if norm is not None:
                writer = metadata_writer.MetadataWriter.create(bytearray(model))
                writer.add_general_info(Path(name).stem, f"MediaPipe {MEDIAPIPE_VERSION} {source}")
                writer.add_image_input(norm_mean=[norm[0]], norm_std=[norm[1]])
                model, _ = writer.populate()
            # A ZipInfo key (fixed date, stored) makes the archive reproducible.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            models[info] = bytes(model)
        model_asset_bundle_utils.create_model_asset_bundle(models, str(out_dir / bundle))


def make_writer_venv(venv_dir: Path) -> Path:
    """Create a venv with ``mediapipe==0.10.21`` and return its interpreter."""
    venv.create(venv_dir, with_pip=True)
    python = venv_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:",
         f"mediapipe=={MEDIAPIPE_VERSION}"],
        check=True,
    )
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "hamer" / "tasks")
    parser.add_argument("--writer-python", type=Path,
                        help=f"interpreter with mediapipe=={MEDIAPIPE_VERSION} (default: make a temporary venv)")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # internal: run build() here
    args = parser.parse_args()

    if args.build is not None:
        build(args.build)
        return
    out_dir = args.out_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="task-bundles-") as tmp:
        python = args.writer_python or make_writer_venv(Path(tmp) / "venv")
        subprocess.run([str(python), str(Path(__file__).resolve()), "--build", str(out_dir)], check=True)
    for bundle in BUNDLES:
        data = (out_dir / bundle).read_bytes()
        print(f"{out_dir / bundle}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
