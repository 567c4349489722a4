"""The tracker and the One Euro filter on the cases a plausible bug gets wrong."""

from __future__ import annotations

import numpy as np
import pytest

from hamer.tracking import HandTracker, OneEuroFilter, box_iou

from test_tracking import SHAPE, det


def _ids_by_box(hands) -> dict[int, list[float]]:
    return {h.track_id: h.box.tolist() for h in hands}


@pytest.mark.parametrize("scores", [(0.95, 0.9), (0.9, 0.95)])  # either detection listed first
def test_overlapping_hands_keep_their_ids_when_the_wrong_pairing_also_passes(scores):
    """Two hands side by side: every pairing has IoU >= 0.2, only the best-first greedy match keeps identities."""
    tracker = HandTracker(match_iou=0.2)
    a, b = [100, 100, 200, 200], [150, 100, 250, 200]
    first = _ids_by_box(tracker.update([det("Right", a), det("Left", b)], SHAPE))
    id_a = next(i for i, box in first.items() if box == a)
    id_b = next(i for i, box in first.items() if box == b)
    a2, b2 = [108, 100, 208, 200], [158, 100, 258, 200]  # both moved 8 px right
    # right pairings IoU 0.85; the wrong ones pass too: IoU(track a, b2) = 4200/15800 = 0.27, (b, a2) = 0.41
    moved = _ids_by_box(tracker.update([det("Left", b2, scores[0]), det("Right", a2, scores[1])], SHAPE))
    assert moved == {id_a: a2, id_b: b2}


def test_iou_exactly_at_the_threshold_matches():
    tracker = HandTracker(match_iou=0.5)
    (first,) = tracker.update([det("Right", [0, 0, 100, 100])], SHAPE)
    (second,) = tracker.update([det("Right", [0, 0, 100, 50])], SHAPE)  # IoU 5000 / 10000 = 0.5
    assert second.track_id == first.track_id


def test_a_track_takes_its_best_detection_once():
    tracker = HandTracker()
    tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
    (hand,) = tracker.update([det("Right", [104, 100, 204, 200], 0.9), det("Right", [160, 100, 260, 200], 0.95)],
                             SHAPE)
    assert hand.box.tolist() == [104, 100, 204, 200]  # IoU 0.92, not the more confident 0.25


def test_a_new_hand_takes_the_label_of_a_lost_one_and_ids_count_up():
    tracker = HandTracker()
    (first,) = tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
    (second,) = tracker.update([det("Right", [400, 300, 500, 400])], SHAPE)  # far away: the first is lost
    (left,) = tracker.update([det("Left", [100, 100, 200, 200])], SHAPE)
    assert (first.track_id, second.track_id, left.track_id) == (0, 1, 2)  # -1 means "no track" in the NPZ
    assert [t.id for t in tracker.tracks] == [1, 2]


def test_pose_fallbacks_of_one_side_most_confident_first():
    tracker = HandTracker()
    (hand,) = tracker.update([det("Left", [100, 100, 200, 200], 0.6, "pose"),
                              det("Left", [400, 100, 500, 200], 0.8, "pose")], SHAPE)
    assert hand.box.tolist() == [400, 100, 500, 200]


@pytest.mark.parametrize("max_missed", [0, 1, 3])
def test_a_track_lives_exactly_max_missed_frames_unseen(max_missed):
    tracker = HandTracker(max_missed=max_missed)
    (first,) = tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
    for _ in range(max_missed):
        tracker.update([], SHAPE)
    tracker.update([det("Right", [102, 100, 202, 200])], SHAPE)  # seen again: the count starts over
    for _ in range(max_missed):
        tracker.update([], SHAPE)
    assert [t.id for t in tracker.tracks] == [first.track_id]  # missed max_missed frames: kept
    tracker.update([], SHAPE)
    assert tracker.tracks == []  # the (max_missed + 1)-th missing frame ends it


def test_a_hand_back_after_max_missed_frames_keeps_its_id():
    tracker = HandTracker(max_missed=2)
    (first,) = tracker.update([det("Left", [100, 100, 200, 200])], SHAPE)
    tracker.update([], SHAPE)
    tracker.update([], SHAPE)
    (again,) = tracker.update([det("Left", [104, 100, 204, 200])], SHAPE)
    assert again.track_id == first.track_id


def test_pose_box_around_a_small_hand_box_is_a_duplicate():
    """Overlap is measured against the smaller box: a big pose box containing a hand box is the same hand."""
    tracker = HandTracker()
    hand, pose = [100, 100, 140, 140], [60, 60, 200, 200]  # pose area 12x the hand's
    hands = tracker.update([det("Right", hand), det("Left", pose, 0.99, source="pose")], SHAPE)
    assert [(h.label, h.detector) for h in hands] == [("Right", "hand")]


def test_pose_box_beside_a_hand_box_is_kept():
    tracker = HandTracker()
    hand, pose = [100, 100, 140, 140], [130, 100, 230, 200]  # overlap 10x40 = 400 < 0.5 * 1600
    hands = tracker.update([det("Right", hand), det("Left", pose, 0.99, source="pose")], SHAPE)
    assert [(h.label, h.detector) for h in hands] == [("Right", "hand"), ("Left", "pose")]


def test_hands_come_right_first_and_labels_are_unique():
    tracker = HandTracker()
    hands = tracker.update([det("Left", [400, 100, 500, 200], 0.99), det("Right", [100, 100, 200, 200], 0.5),
                            det("Left", [250, 300, 300, 350], 0.7)], SHAPE)
    assert [h.label for h in hands] == ["Right", "Left"]
    assert hands[1].box.tolist() == [400, 100, 500, 200]  # the more confident Left


def test_one_euro_by_hand_with_the_defaults():
    """min_cutoff 1 Hz, beta 0: at dt = 1 / (2 pi) s, tau = 1 / (2 pi) s, alpha = 1 / (1 + tau / dt) = 1/2."""
    filt = OneEuroFilter()
    assert filt(np.array([0.0, 4.0]), 0.0).tolist() == [0.0, 4.0]
    np.testing.assert_allclose(filt(np.array([1.0, 0.0]), 1 / (2 * np.pi)), [0.5, 2.0], rtol=1e-12)
    np.testing.assert_allclose(filt(np.array([1.0, 0.0]), 2 / (2 * np.pi)), [0.75, 1.0], rtol=1e-12)


@pytest.mark.parametrize("kwargs", [{"min_cutoff": 0}, {"d_cutoff": 0}, {"beta": -1}])
def test_one_euro_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="need min_cutoff > 0, d_cutoff > 0, beta >= 0"):
        OneEuroFilter(**kwargs)


def test_a_hand_keeps_wanting_the_label_a_visible_hand_keeps():
    """The left hand is called "Right" for many frames while the right hand stays "Right": no switch, no swap."""
    tracker = HandTracker(label_hold=2)
    first = tracker.update([det("Right", [100, 100, 200, 200]), det("Left", [400, 100, 500, 200])], SHAPE)
    ids = {h.label: h.track_id for h in first}
    for _ in range(4):
        hands = tracker.update([det("Right", [100, 100, 200, 200]), det("Right", [400, 100, 500, 200], 0.5)], SHAPE)
        assert {h.label: h.track_id for h in hands} == ids
    assert [(t.label, t.votes) for t in tracker.tracks] == [("Right", 0), ("Left", 4)]


def test_a_switch_takes_the_label_of_a_lost_hand_and_ends_its_track():
    tracker = HandTracker(label_hold=2, max_missed=10)
    first = tracker.update([det("Right", [100, 100, 200, 200]), det("Left", [400, 100, 500, 200])], SHAPE)
    ids = {h.label: h.track_id for h in first}
    (hand,) = tracker.update([det("Right", [400, 100, 500, 200])], SHAPE)  # the right hand unseen: 1 vote
    assert (hand.label, hand.track_id) == ("Left", ids["Left"])
    (hand,) = tracker.update([det("Right", [400, 100, 500, 200])], SHAPE)  # 2 votes: takes "Right"
    assert (hand.label, hand.track_id) == ("Right", ids["Left"])
    assert [(t.id, t.label, t.votes) for t in tracker.tracks] == [(ids["Left"], "Right", 0)]  # the lost one ended


def test_a_vote_run_broken_by_one_frame_starts_over():
    tracker = HandTracker(label_hold=3)
    tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
    said = ["Left", "Left", "Right", "Left", "Left", "Left"]
    held = [tracker.update([det(lab, [100, 100, 200, 200])], SHAPE)[0].label for lab in said]
    assert held == ["Right", "Right", "Right", "Right", "Right", "Left"]


def test_the_default_settings():
    """match_iou 0.2, label_hold 5, max_missed 10, duplicate_overlap 0.5, by their effects."""
    tracker = HandTracker()
    (first,) = tracker.update([det("Right", [0, 0, 100, 100])], SHAPE)
    (second,) = tracker.update([det("Right", [0, 0, 100, 20])], SHAPE)  # IoU 2000 / 10000 = 0.2: same track
    assert second.track_id == first.track_id
    (third,) = tracker.update([det("Right", [0, 0, 100, 20 * 0.99])], SHAPE)  # IoU 0.99 with the last box
    assert third.track_id == first.track_id
    (fourth,) = tracker.update([det("Right", [0, 0, 100, 100])], SHAPE)  # IoU 0.198 < 0.2: a new track
    assert fourth.track_id != first.track_id
    held = [tracker.update([det("Left", [0, 0, 100, 100])], SHAPE)[0].label for _ in range(5)]
    assert held == ["Right"] * 4 + ["Left"]  # taken on the 5th frame
    for _ in range(10):
        tracker.update([], SHAPE)
    assert len(tracker.tracks) == 1  # unseen 10 frames: kept
    tracker.update([], SHAPE)
    assert tracker.tracks == []
    hand, pose = [100, 100, 140, 140], [120, 100, 220, 200]  # overlap 20 x 40 = 800 = 0.5 x 1600: not more
    hands = HandTracker().update([det("Right", hand), det("Left", pose, 0.99, source="pose")], SHAPE)
    assert [(h.label, h.detector) for h in hands] == [("Right", "hand"), ("Left", "pose")]


def test_pose_overlap_exactly_at_the_duplicate_threshold_is_kept():
    hand, pose = [100, 100, 140, 140], [110, 100, 210, 200]  # overlap 30 x 40 = 1200 = 0.75 x 1600
    for overlap, kept in ((0.75, True), (0.74, False)):
        hands = HandTracker(duplicate_overlap=overlap).update(
            [det("Right", hand), det("Left", pose, 0.99, source="pose")], SHAPE)
        assert [h.detector for h in hands] == (["hand", "pose"] if kept else ["hand"])


def test_iou_of_degenerate_and_disjoint_boxes():
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0  # no area at all: 0, not a division by zero
    assert box_iou(np.array([0, 0, 10, 10]), np.array([20, 20, 10, 10])) == 0.0  # inverted: no area
    assert box_iou(np.array([0, 0, 10, 10]), np.array([0, 20, 10, 30])) == 0.0  # side by side in y only
    assert box_iou(np.array([0, 0, 10, 10]), np.array([20, 0, 30, 10])) == 0.0  # in x only
    assert box_iou(np.array([10, 10, 0, 0]), np.array([10, 10, 0, 0])) == 0.0  # two inverted boxes
    assert box_iou(np.array([0, 0, 10, 20]), np.array([5, 10, 15, 30])) == pytest.approx(50 / 350)


def test_one_euro_speed_term_with_the_default_d_cutoff():
    """beta 1 s/unit, d_cutoff 1 Hz (default): at dt = 1 / (2 pi) s both low-passes start with alpha 1/2.
    A step 0 -> 1: speed 1 / dt = 2 pi, low-passed to pi; cutoff 1 + pi Hz, alpha = (1 + pi) / (2 + pi)."""
    filt = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    filt(np.zeros(2, dtype=np.float32), 0.0)
    out = filt(np.ones(2, dtype=np.float32), 1 / (2 * np.pi))
    assert out.dtype == np.float64  # the filter runs in float64 whatever the samples' dtype
    np.testing.assert_allclose(out, (1 + np.pi) / (2 + np.pi), rtol=1e-12)
    assert filt(np.ones(2, dtype=np.float32), 2 / (2 * np.pi)).dtype == np.float64


def test_label_hold_of_one_frame_and_bad_holds():
    tracker = HandTracker(label_hold=1)
    tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
    assert tracker.update([det("Left", [100, 100, 200, 200])], SHAPE)[0].label == "Left"  # at once
    for hold in (0, -3):
        with pytest.raises(ValueError, match=rf"^label_hold must be >= 1 frame, got {hold}$"):
            HandTracker(label_hold=hold)


def test_skipped_hands_and_label_changes_are_logged(caplog):
    tracker = HandTracker(label_hold=1)
    with caplog.at_level("DEBUG", logger="hamer.tracking"):
        (right,) = tracker.update([det("Right", [100, 100, 200, 200])], SHAPE)
        tracker.update([det("Right", [100, 100, 200, 200]), det("Right", [400, 100, 500, 200], 0.5)], SHAPE)
        tracker.update([det("Left", [100, 100, 200, 200])], SHAPE)
    assert caplog.messages == [
        "Right hand at [400.0, 100.0, 500.0, 200.0] skipped: a tracked hand holds that label",
        f"track {right.track_id}: label Right -> Left after 1 frames"]


def test_a_detection_goes_to_one_track_only():
    """Two overlapping tracked hands, then one detection that overlaps both (IoU 0.67 and 0.54): the better track
    takes it; the other is missed, not given the same detection."""
    tracker = HandTracker()
    first = tracker.update([det("Right", [100, 100, 200, 200]), det("Left", [150, 100, 250, 200])], SHAPE)
    ids = {h.label: h.track_id for h in first}
    hands = tracker.update([det("Right", [120, 100, 220, 200])], SHAPE)
    assert [(h.label, h.track_id) for h in hands] == [("Right", ids["Right"])]
    assert {t.id: t.missed for t in tracker.tracks} == {ids["Right"]: 0, ids["Left"]: 1}


def test_two_hands_changing_labels_together_swap_on_the_hold_th_frame():
    """Both hands called by the other label from the same frame: both reach label_hold votes together and swap
    then (not a frame later); both tracks live on with their ids and their votes reset."""
    tracker = HandTracker(label_hold=2)
    first = tracker.update([det("Right", [100, 100, 200, 200]), det("Left", [400, 100, 500, 200])], SHAPE)
    ids = {h.label: h.track_id for h in first}
    swapped = [det("Left", [100, 100, 200, 200]), det("Right", [400, 100, 500, 200])]
    assert {h.label: h.track_id for h in tracker.update(swapped, SHAPE)} == ids  # 1 vote each: held
    assert {h.label: h.track_id for h in tracker.update(swapped, SHAPE)} == {"Left": ids["Right"],
                                                                             "Right": ids["Left"]}
    assert sorted((t.id, t.votes) for t in tracker.tracks) == sorted((i, 0) for i in ids.values())
    assert {h.label: h.track_id for h in tracker.update(swapped, SHAPE)} == {"Left": ids["Right"],
                                                                             "Right": ids["Left"]}


def test_iou_of_sub_pixel_boxes():
    thin = np.array([0.0, 0.0, 0.5, 0.25])
    assert box_iou(thin, thin) == 1.0
    assert box_iou(thin, thin + [0.25, 0, 0.25, 0]) == pytest.approx(1 / 3)  # shifted by half its width
