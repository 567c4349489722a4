"""Hands across video frames: identity by box overlap, a held Right/Left label, optional One Euro smoothing.

MediaPipe's handedness flickers from frame to frame, and a hand reconstructed under the wrong label is HaMeR's
mirror image of it (its joints jump by many centimetres). :class:`HandTracker` matches each frame's detections to
tracks by IoU and changes a track's label only after MediaPipe has said the other one for ``label_hold``
consecutive frames. :class:`VideoHands` then runs HaMeR on every tracked hand *with its held label* (the crop is
mirrored by label, so relabelling the output would not do) and can smooth the joints with :class:`OneEuroFilter`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .pipeline import Reconstructor, box_problem, find_hands, frame_result
from .results import LABELS, Camera, FrameResult, Hand

if TYPE_CHECKING:
    from .detectors import Detector, FrameRef, HandDetection

log = logging.getLogger(__name__)


class OneEuroFilter:
    """One Euro filter (Casiez, Roussel and Vogel, CHI 2012) of an array signal, element by element.

    An exponential low-pass whose cutoff rises with speed: ``cutoff = min_cutoff + beta * |dx/dt|`` (Hz), the
    speed itself low-passed at ``d_cutoff`` Hz. Lower ``min_cutoff`` removes more jitter at rest; higher ``beta``
    lags less when moving. ``beta`` is in s/unit of the signal (here: s/m).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0):
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """The filtered value of sample ``x`` (any shape, fixed) taken at time ``t`` seconds (increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        if dt <= 0:
            raise ValueError(f"OneEuroFilter times must increase: got {t} s after {self._t} s")
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * ((x - self._x) / dt - self._dx)
        alpha = self._alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = self._x + alpha * (x - self._x)
        self._t = t
        return self._x.copy()


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (4,) x1, y1, x2, y2 boxes."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(w, 0.0) * max(h, 0.0))


@dataclass(eq=False)
class Track:
    """A hand followed across frames: its held label, last box (pixels), and counters in frames."""

    id: int
    label: str
    box: np.ndarray
    votes: int = 0  # consecutive frames MediaPipe said the other label
    missed: int = 0  # consecutive frames without a matching detection


class HandTracker:
    """Keeps each hand's identity and Right/Left label across the frames of one video.

    Per frame: pose-fallback boxes that overlap a hand-landmarker box are dropped (the same hand, found twice);
    detections are matched to tracks greedily by IoU (>= ``match_iou``); a track takes the other label once
    MediaPipe has given it for ``label_hold`` consecutive frames; unmatched detections start tracks; a track unseen
    for more than ``max_missed`` frames ends. At most one track holds each label, so each frame yields at most one
    Right and one Left hand: a new hand whose label a visible track holds waits until that changes.
    """

    def __init__(self, match_iou: float = 0.2, label_hold: int = 5, max_missed: int = 10,
                 duplicate_overlap: float = 0.5) -> None:
        if label_hold < 1:
            raise ValueError(f"label_hold must be >= 1 frame, got {label_hold}")
        self.match_iou = match_iou
        self.label_hold = label_hold
        self.max_missed = max_missed
        self.duplicate_overlap = duplicate_overlap
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, detections: Sequence[HandDetection], image_shape: tuple[int, ...]) -> list[Hand]:
        """This frame's tracked hands (Right first) from MediaPipe's detections in an image of ``image_shape``.

        Each hand has its track's held ``label`` and ``track_id``; ``detected_label`` is MediaPipe's."""
        candidates = self._candidates(detections, image_shape)
        matches = self._match(candidates)
        for track, det in matches.items():
            track.box, track.missed = det.box, 0
            track.votes = track.votes + 1 if det.label != track.label else 0
        self._switch_labels(matches)
        matched_dets = {id(d) for d in matches.values()}
        for det in candidates:
            if id(det) not in matched_dets:
                track = self._start(det, matches)
                if track is not None:
                    matches[track] = det
        for track in self.tracks:
            if track not in matches:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        hands = [Hand.from_detection(det, t.label, t.id) for t, det in matches.items()]
        return sorted(hands, key=lambda h: LABELS.index(h.label))

    def _candidates(self, detections: Sequence[HandDetection], image_shape: tuple[int, ...]) -> list[HandDetection]:
        """Detections with a box that overlaps the image, minus pose boxes of hands the hand landmarker found."""
        usable = [d for d in detections if box_problem(d.box, image_shape) is None]
        hands = [d for d in usable if d.source == "hand"]
        poses = [d for d in usable if d.source != "hand" and not any(
            _intersection(d.box, h.box) > self.duplicate_overlap * min(_area(d.box), _area(h.box)) for h in hands)]
        return sorted(hands, key=lambda d: -d.score) + sorted(poses, key=lambda d: -d.score)

    def _match(self, candidates: list[HandDetection]) -> dict[Track, HandDetection]:
        pairs = [(box_iou(t.box, d.box), ti, di) for ti, t in enumerate(self.tracks) for di, d in enumerate(candidates)]
        matches: dict[Track, HandDetection] = {}
        used: set[int] = set()
        for iou, ti, di in sorted(pairs, key=lambda p: -p[0]):
            track = self.tracks[ti]
            if iou >= self.match_iou and track not in matches and di not in used:
                matches[track] = candidates[di]
                used.add(di)
        return matches

    def _switch_labels(self, matches: dict[Track, HandDetection]) -> None:
        """Give the other label to matched tracks that reached ``label_hold`` votes, keeping labels unique."""
        wanting = [t for t in matches if t.votes >= self.label_hold]
        for track in wanting:
            if track.votes < self.label_hold:  # already swapped with a partner below
                continue
            other = _other(track.label)
            holder = next((t for t in self.tracks if t.label == other), None)
            if holder is not None and holder in matches and holder.votes < self.label_hold:
                continue  # the other label belongs to a visible hand that keeps it
            if holder is not None and holder in matches:
                holder.label, holder.votes = track.label, 0  # both hands switched: swap
            elif holder is not None:
                self.tracks.remove(holder)  # a lost hand held it
            log.debug("track %d: label %s -> %s after %d frames", track.id, track.label, other, track.votes)
            track.label, track.votes = other, 0

    def _start(self, det: HandDetection, matches: dict[Track, HandDetection]) -> Track | None:
        holder = next((t for t in self.tracks if t.label == det.label), None)
        if holder is not None and holder in matches:
            log.debug("%s hand at %s skipped: a tracked hand holds that label", det.label, det.box.tolist())
            return None
        if holder is not None:
            self.tracks.remove(holder)
        track = Track(self._next_id, det.label, det.box)
        self._next_id += 1
        self.tracks.append(track)
        return track


def _other(label: str) -> str:
    return LABELS[1 - LABELS.index(label)]


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    """A video frame after detection and tracking, before reconstruction: its tracked, detected-only ``hands``,
    every MediaPipe detection, and the ids of the tracks alive after it (whose filters smoothing keeps)."""

    image_shape: tuple[int, ...]
    timestamp_ms: int
    hands: tuple[Hand, ...]
    detections: tuple[HandDetection, ...] | None
    live_tracks: frozenset[int]


class VideoHands:
    """The hands of one video, frame by frame: MediaPipe -> :class:`HandTracker` -> HaMeR -> smoothing.

    Args:
        detector: a :class:`hamer.detectors.Detector` that sees this video's frames only, in order (e.g.
            ``HAMER.detector`` in VIDEO mode, MediaPipe's ``HandDetector`` in VIDEO mode, ``BoxesFromFile``).
        reconstructor: runs HaMeR on the tracked hands (``HAMER.reconstructor``); None: boxes and labels only.
        tracker: default ``HandTracker()``.
        make_filter: builds a filter per track for its joints, vertices and camera translation (e.g.
            ``functools.partial(OneEuroFilter, min_cutoff, beta)``); None: no smoothing.
    """

    def __init__(self, detector: Detector, reconstructor: Reconstructor | None = None,
                 tracker: HandTracker | None = None, make_filter: Callable[[], OneEuroFilter] | None = None) -> None:
        self.detector = detector
        self.reconstructor = reconstructor
        self.tracker = tracker if tracker is not None else HandTracker()
        self.make_filter = make_filter
        self._filters: dict[int, tuple[str, OneEuroFilter]] = {}

    def __call__(self, img_bgr: np.ndarray, timestamp_ms: int) -> FrameResult:
        """The frame at ``timestamp_ms`` (strictly increasing): tracked hands with held labels, Right first.

        The network runs once on the frame's tracked hands, each under its held label (the crop is mirrored by
        label, so relabelling an output would not do); smoothed values replace the raw ones.
        """
        tracked = self.track(img_bgr, timestamp_ms)
        hands = tracked.hands if self.reconstructor is None else self.reconstructor(img_bgr, tracked.hands)
        return self.finish(tracked, hands)

    def track(self, img_bgr: np.ndarray, timestamp_ms: int, frame: FrameRef | None = None) -> TrackedFrame:
        """Detection and tracking of one frame, the first half of :meth:`__call__` (frames in order); ``frame``:
        which frame it is, for the detector."""
        hands, detections = find_hands(img_bgr, detector=self.detector, select=self.tracker.update,
                                       timestamp_ms=timestamp_ms, frame=frame)
        return TrackedFrame(img_bgr.shape, timestamp_ms, tuple(hands), detections,
                            frozenset(t.id for t in self.tracker.tracks))

    def finish(self, tracked: TrackedFrame, hands: Sequence[Hand]) -> FrameResult:
        """The frame's result from its tracked ``hands`` as reconstructed (or not), smoothed: the second half of
        :meth:`__call__`, called in frame order (the reconstruction in between may run batched elsewhere)."""
        result = frame_result(tracked.image_shape, hands, tracked.detections, self.reconstructor)
        if self.make_filter is None or result.camera is None:
            return result
        hands = self._smooth(result.hands, tracked.timestamp_ms / 1000.0, result.camera, tracked.live_tracks)
        return dataclasses.replace(result, hands=hands)

    def _smooth(self, hands: Sequence[Hand], t: float, camera: Camera, live: frozenset[int]) -> tuple[Hand, ...]:
        """Each hand with its joints, vertices and camera translation filtered, its 2D joints moved with them."""
        self._filters = {k: v for k, v in self._filters.items() if k in live}
        smoothed = []
        for hand in hands:
            label, filt = self._filters.get(hand.track_id, (None, None))
            if filt is None or label != hand.label:  # new track, or relabelled: a different reconstruction
                filt = self.make_filter()
                self._filters[hand.track_id] = (hand.label, filt)
            joined = filt(np.concatenate([hand.keypoints_3d, hand.vertices, hand.cam_t[None]]), t).astype(np.float32)
            keypoints_3d, vertices, cam_t = joined[:21], joined[21:-1], joined[-1]
            # the 2D joints move as the camera sees the smoothing move the hand (HaMeR's 2D joints are kept as
            # the reference: they do not depend on the camera, see pipeline.place_hands)
            shift = camera.project(keypoints_3d + cam_t) - camera.project(hand.keypoints_3d + hand.cam_t)
            smoothed.append(hand.replace(keypoints_3d=keypoints_3d, vertices=vertices, cam_t=cam_t,
                                         keypoints_2d=hand.keypoints_2d + shift))
        return tuple(smoothed)
