"""OpenPose JSON: one ``<name>_<frame:012d>_keypoints.json`` per frame in the folder ``<name>.openpose``.

OpenPose's layout (``--write_json``): ``{"version": 1.3, "people": [...]}``, each person with flat lists
``hand_right_keypoints_2d`` (x, y, c per joint, image pixels), ``hand_left_keypoints_2d``, and ``*_3d`` (x, y, z, c
per joint, metres in the camera frame: ``keypoints_3d + cam_t``). HaMeR does not tell people apart: every frame
with a hand has one person holding at most one Right and one Left hand; an absent hand is all zeros (OpenPose's
convention), a frame without hands has no person. The joint order is OpenPose's hand order, the same as ours; c is
the detector's score (1 for a box the user gave).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_folder, naming
from ..outputs import Frame
from ..results import Hand

NUM_JOINTS = 21


def hand_lists(hand: Hand | None) -> tuple[list[float], list[float]]:
    """The flat 2D (x, y, c) and 3D (x, y, z, c) lists of one hand; zeros for an absent one."""
    if hand is None or not hand.reconstructed:
        return [0.0] * NUM_JOINTS * 3, [0.0] * NUM_JOINTS * 4
    score = 1.0 if np.isnan(hand.score) else float(hand.score)
    conf = np.full((NUM_JOINTS, 1), score)
    flat2d = np.concatenate([hand.keypoints_2d, conf], axis=1).astype(np.float64)
    flat3d = np.concatenate([hand.keypoints_3d + hand.cam_t, conf], axis=1).astype(np.float64)
    return np.round(flat2d, 6).reshape(-1).tolist(), np.round(flat3d, 7).reshape(-1).tolist()


def frame_people(frame: Frame) -> dict[str, Any]:
    """The OpenPose JSON object of one frame."""
    hands = {h.label: h for h in frame.result.hands if h.reconstructed}
    if not hands:
        return {"version": 1.3, "people": []}
    right_2d, right_3d = hand_lists(hands.get("Right"))
    left_2d, left_3d = hand_lists(hands.get("Left"))
    person = {"person_id": [-1], "pose_keypoints_2d": [], "face_keypoints_2d": [],
              "hand_left_keypoints_2d": left_2d, "hand_right_keypoints_2d": right_2d,
              "pose_keypoints_3d": [], "face_keypoints_3d": [],
              "hand_left_keypoints_3d": left_3d, "hand_right_keypoints_3d": right_3d}
    return {"version": 1.3, "people": [person]}


class OpenPoseWriter:
    """Writes ``<name>_<frame>_keypoints.json`` files into ``folder``; the folder appears whole or not at all."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = Path(folder), name

    def __enter__(self) -> OpenPoseWriter:
        self._context = atomic_folder(self.folder)
        self._staging = self._context.__enter__()
        return self

    def add(self, frame: Frame) -> None:
        path = self._staging / f"{self.name}_{frame.index:012d}_keypoints.json"
        with naming(self.folder / path.name):
            path.write_text(json.dumps(frame_people(frame)), encoding="utf-8")

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)
