"""The corpus time estimate's model (benchmarks/corpus_estimate.py): its scheduler, calls, segments and corpus,
against makespans computed by hand and the bounds of greedy list scheduling."""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus_estimate.py"
spec = importlib.util.spec_from_file_location("corpus_estimate", PATH)
est = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = est  # (its dataclasses look their module up)
spec.loader.exec_module(est)

# a call's time is its frames, one second each, whatever the number of lanes running: makespans by hand
FRAMES_ARE_SECONDS = est.Costs(gpu_s=0.0, lane_s=1.0, lanes=1)


def units(*frames: int) -> list:
    return [est.Unit(n) for n in frames]


# ---------------------------------------------------------------------------------------------------- scheduler

def test_list_schedule_gives_each_job_to_the_worker_free_first():
    # w0: 3, w1: 3; then w0 (free at 3, lower index) 3+2 = 5, w1 3+2 = 5, w0 5+2 = 7
    assert est.list_schedule([3, 3, 2, 2, 2], 2) == [7.0, 5.0]
    # every worker starts at start_s; one without a job ends there
    assert est.list_schedule([1.5], 3, start_s=10.0) == [11.5, 10.0, 10.0]
    assert est.list_schedule([], 2) == [0.0, 0.0]
    with pytest.raises(ValueError, match="0 workers"):
        est.list_schedule([1.0], 0)


def test_input_order_against_longest_first_on_grahams_example():
    """Six 1-second jobs and then a 3-second one on 3 workers: in input order 2 + 3 = 5 s; longest first 3 s."""
    jobs = units(1, 1, 1, 1, 1, 1, 3)
    got = est.simulate(jobs, 3, FRAMES_ARE_SECONDS)
    assert got.makespan_s == 5.0
    assert sorted(got.ends_s) == [2.0, 2.0, 5.0]
    assert est.simulate(jobs, 3, FRAMES_ARE_SECONDS, longest_first=True).makespan_s == 3.0


def test_load_unit_and_seek_seconds_add_where_they_belong():
    costs = est.Costs(gpu_s=0.0, lane_s=1.0, lanes=1, unit_s=0.5, seek_s=2.0, load_s=10.0)
    jobs = [est.Unit(4), est.Unit(4, warmup=1, seek=True)]
    # worker 0: 10 + 4 + 0.5; worker 1: 10 + (4 + 1 warm-up) + 0.5 + 2 seek
    assert est.simulate(jobs, 2, costs).ends_s == [14.5, 17.5]
    assert est.simulate(jobs, 1, costs).ends_s == [10 + 4.5 + 7.5]


# ---------------------------------------------------------------------------------------------------- a call

def test_a_call_shares_the_gpu_between_its_running_lanes():
    gpu_bound = est.Costs(gpu_s=1.0, lane_s=1.0, lanes=2)
    # 10 frames on both lanes at 2 s a frame each (the GPU shared), then 20 frames alone at 1 s: the GPU's total
    assert est.call_seconds([10, 30], gpu_bound) == 40.0
    assert est.call_seconds([30, 10], gpu_bound) == 40.0
    lane_bound = est.Costs(gpu_s=1.0, lane_s=3.0, lanes=2)
    # the lanes bound it: 10 x max(3, 2) + 20 x max(3, 1)
    assert est.call_seconds([10, 30], lane_bound) == 90.0
    assert est.call_seconds([7], lane_bound) == 21.0
    assert est.call_seconds([], lane_bound) == 0.0
    with pytest.raises(ValueError, match="3 units in a call of 2 lanes"):
        est.call_seconds([1, 1, 1], lane_bound)


def test_a_worker_waits_for_its_calls_last_unit():
    costs = est.Costs(gpu_s=0.0, lane_s=1.0, lanes=2)
    # calls [10, 1] and [1, 1] on one worker: 10 s, then 1 s (lanes that took the next unit when free: 10 s)
    assert est.simulate(units(10, 1, 1, 1), 1, costs).makespan_s == 11.0
    # on two workers: 10 and 1
    assert est.simulate(units(10, 1, 1, 1), 2, costs).ends_s == [10.0, 1.0]


# ---------------------------------------------------------------------------------------------------- lanes pull

def test_lanes_that_pull_take_the_next_unit_when_free():
    costs = est.Costs(gpu_s=0.0, lane_s=1.0, lanes=2)
    # lane 1 takes 10; lane 2 takes 1, 1, 1 one after the other: 10 s (calls of two: 11 s)
    assert est.stream(units(10, 1, 1, 1), 1, costs).ends_s == [10.0]
    # two workers: 10 | 1 on the first, 1 | 1 on the second
    assert est.stream(units(10, 1, 1, 1), 2, costs).ends_s == [10.0, 1.0]
    gpu_bound = est.Costs(gpu_s=1.0, lane_s=1.0, lanes=2)
    # 2 and 2 frames at 2 s a frame (the GPU shared), then 2 frames alone at 1 s: 4 + 2
    assert est.stream(units(2, 2, 2), 1, gpu_bound).makespan_s == pytest.approx(6.0)
    assert est.stream(units(10, 30), 1, gpu_bound).makespan_s == pytest.approx(40.0)
    lane_bound = est.Costs(gpu_s=1.0, lane_s=3.0, lanes=2)
    assert est.stream(units(2, 2, 2), 1, lane_bound).makespan_s == pytest.approx(12.0)
    assert est.stream([], 3, lane_bound).ends_s == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="0 workers"):
        est.stream(units(1), 0, lane_bound)


def test_a_lane_is_off_the_gpu_while_it_opens_or_seeks():
    costs = est.Costs(gpu_s=1.0, lane_s=1.0, lanes=2, unit_s=1.0, seek_s=2.0, load_s=5.0)
    # both open for 1 s, then 2 frames each at 2 s a frame (the GPU shared): 5 + 1 + 4
    assert est.stream(units(2, 2), 1, costs).makespan_s == pytest.approx(10.0)
    # the first from 6 s alone at 1 s a frame, done at 8 s when the second's seek ends; the second alone: 10 s
    got = est.stream([est.Unit(2), est.Unit(2, seek=True)], 1, costs)
    assert got.makespan_s == pytest.approx(10.0)
    assert got.network_s == 4.0


def test_costs_refuse_what_has_no_time():
    with pytest.raises(ValueError, match="a frame must take time"):
        est.Costs(gpu_s=0.0, lane_s=0.0, lanes=1)
    with pytest.raises(ValueError, match="one lane or more"):
        est.Costs(gpu_s=1.0, lane_s=1.0, lanes=0)


# ---------------------------------------------------------------------------------------------------- segments

def test_segments_cut_each_video_with_a_warmup_before_all_but_the_first():
    got = est.segments([20000, 5], 9000, 30)
    assert got == [est.Unit(9000, 0, False), est.Unit(9000, 30, True), est.Unit(2000, 30, True), est.Unit(5, 0, False)]
    # a warm-up longer than the frames before a segment takes what there is
    assert [(u.frames, u.warmup) for u in est.segments([25], 10, 30)] == [(10, 0), (10, 10), (5, 20)]
    assert est.segments([20000, 5], None, 30) == [est.Unit(20000), est.Unit(5)]
    with pytest.raises(ValueError, match="segment frames 0"):
        est.segments([10], 0, 30)
    with pytest.raises(ValueError, match="warm-up -1"):
        est.segments([10], 5, -1)


def test_segments_spread_two_long_videos_over_four_workers():
    """Two 100-frame videos on 4 workers: whole 100 s; segments of 25 with 5 frames of warm-up: 25 | 30 | 30 | 30,
    then 25 + 25 = 50 on the first worker and 30 + 30 = 60 on the others."""
    whole = est.simulate(units(100, 100), 4, FRAMES_ARE_SECONDS)
    cut = est.simulate(est.segments([100, 100], 25, 5), 4, FRAMES_ARE_SECONDS)
    assert whole.makespan_s == 100.0
    assert cut.ends_s == [50.0, 60.0, 60.0, 60.0]


@pytest.mark.parametrize("seed", range(40))
def test_segments_cost_at_most_their_overhead_and_one_call_more_than_whole_videos(seed):
    """Greedy list scheduling ends at most (total - last job) / workers after the start, plus the last job; any
    schedule of the whole videos takes at least their total / workers. So with the GPU bounding every call (a
    call's time its frames', additive) segments are never worse than whole videos by more than their extra work
    (warm-up, units, seeks) / workers plus one call of segments."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 30))]
    workers, lanes = rng.randint(1, 12), rng.randint(1, 3)
    costs = est.Costs(gpu_s=0.01, lane_s=0.01 * rng.random(), lanes=lanes, unit_s=0.05, seek_s=0.1, load_s=1.0)
    size, warmup = rng.randint(5, 120), rng.randint(0, 20)
    whole = est.simulate(est.segments(lengths, None, 0), workers, costs)
    pieces = est.segments(lengths, size, warmup)
    cut = est.simulate(pieces, workers, costs)
    pulled = est.stream(pieces, workers, costs)
    extra = (sum(u.warmup for u in pieces) * costs.gpu_s + (len(pieces) - len(lengths)) * costs.unit_s
             + sum(u.seek for u in pieces) * costs.seek_s)
    longest_call = lanes * ((size + warmup) * costs.gpu_s + costs.unit_s + costs.seek_s)
    assert cut.makespan_s <= whole.makespan_s + extra / workers + longest_call + 1e-9
    if lanes == 1:  # a lane that pulls is a worker that takes calls of one unit: two implementations agree
        assert sorted(pulled.ends_s) == pytest.approx(sorted(cut.ends_s), rel=1e-9)  # (ties: either worker)
    # and both no better than the GPUs' work allows
    for got in (whole, cut, pulled, est.stream(est.segments(lengths, None, 0), workers, costs)):
        assert got.makespan_s >= costs.load_s + got.network_s / workers - 1e-9
        assert 0 < got.utilisation() <= 1 + 1e-12
        assert got.tail() >= 1.0


# ---------------------------------------------------------------------------------------------------- the corpus

def test_corpus_lengths_sum_to_the_hours_in_the_stated_distribution():
    lengths = est.corpus_lengths(1000, 30, median_min=10, sigma=1.5, max_hours=10, seed=0)
    assert sum(lengths) == 1000 * 3600 * 30
    assert min(lengths) >= 1 and max(lengths) <= 10 * 3600 * 30
    minutes = np.asarray(lengths) / 30 / 60
    # the median of ~2,000 lognormal draws: log standard error 1.25 * 1.5 / sqrt(2000) = 0.04
    assert abs(math.log(np.median(minutes) / 10)) < 0.15
    assert abs(np.std(np.log(minutes[:-1])) - 1.5) < 0.1  # (the last one cut to make the sum exact)
    assert lengths == est.corpus_lengths(1000, 30, 10, 1.5, 10, seed=0)
    assert lengths != est.corpus_lengths(1000, 30, 10, 1.5, 10, seed=1)
    assert sum(est.corpus_lengths(0.01, 25, 1, 0.5, 0.001, seed=3)) == 900
    assert est.corpus_lengths(0.01, 25, 1, 0.5, 0.001, seed=3)[0] == 90  # capped at 0.001 h
    with pytest.raises(ValueError, match="none can be drawn"):
        est.corpus_lengths(0, 30, 10, 1.5, 10, seed=0)


def test_the_estimate_of_a_small_corpus_holds_the_schedules_bounds():
    args = argparse.Namespace(hours=20, fps=30, median_min=10, sigma=1.5, max_hours=4, seed=2, segment_frames=9000,
                              warmup=30, gpu_ms_per_crop=32, hands=2, detect_workers=2, lane_ms=55, unit_s=0.2,
                              seek_s=0.4, load_s=10, gpus=[1, 8, 64])
    result = est.estimate(args)
    assert [r["gpus"] for r in result["rows"]] == [1, 8, 64]
    total_h = 20 * 3600 * 30 * 0.064 / 3600
    for row in result["rows"]:
        assert row["ideal_h"] == pytest.approx(total_h / row["gpus"])
        for name in ("whole", "whole_longest_first", "segments", "whole_stream", "segments_stream"):
            assert row[name]["makespan_h"] >= row["ideal_h"]
            assert row[name]["utilisation"] <= 1.0
    # one GPU: the same work either way, segments only add their warm-up and seeks
    one = result["rows"][0]
    assert one["segments"]["makespan_h"] >= one["whole"]["makespan_h"]
    assert one["segments"]["makespan_h"] <= one["whole"]["makespan_h"] * (1 + result["warmup_share"]) + 0.1
    # 64 GPUs: the longest video bounds whole videos (up to 4 h x 1.92 with the GPU to itself), not segments
    many = result["rows"][2]
    assert many["whole"]["makespan_h"] >= result["longest_video_h"] * 1.92
    assert many["segments"]["makespan_h"] < many["whole"]["makespan_h"] / 2
    assert "| 64 |" in est.markdown({"command": "", **result}, "a CPU")
