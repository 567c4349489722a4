"""Makes the two pictures of docs/CLI.md from ../shared/images (run from the repository root).

* overlay_bbox_only.jpg: ``hamer run ../shared/images/test5.jpeg --bbox-only --overlay`` as the command writes it.
* overlay_skeleton.jpg: :func:`hamer.overlay.draw_hands` fed MediaPipe's 21 landmarks (the same OpenPose joint
  order) as ``keypoints_2d`` on test4.jpg (enlarged 2x, cropped): what the skeleton drawing looks like on real
  hands (the tests' synthetic model gives random joints; the real checkpoint is not part of the repository).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from hamer.detection import DetectorOptions, HandDetector
from hamer.outputs import Hand
from hamer.overlay import draw_hands

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
DOCS = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "hamer", "run", str(IMAGES / "test5.jpeg"), "--bbox-only", "--overlay",
                        "--quiet", "--out", out], check=True)
        shutil.copy(Path(out) / "test5.overlay.jpg", DOCS / "overlay_bbox_only.jpg")
    img = cv2.imread(str(IMAGES / "test4.jpg"))
    with HandDetector(DetectorOptions(pose_task_path=None)) as detector:
        detections = detector.detect(img)
    zoom = 2.0  # drawn on the image enlarged, so that the small hands show
    hands = [Hand.from_detection(d) for d in detections]
    for hand, det in zip(hands, detections, strict=True):
        hand.box, hand.keypoints_2d = det.box * zoom, det.landmarks * zoom
    big = cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(DOCS / "overlay_skeleton.jpg"), draw_hands(big, hands)[640:1120, 300:1240],
                [cv2.IMWRITE_JPEG_QUALITY, 85])

if __name__ == "__main__":
    main()
