"""Jitter removed and lag added by the One Euro filter of ``hamer run --smooth``, on a synthetic hand track.

Track: the 21 joints of a hand (fixed offsets, ~8 cm spread) whose centre moves smoothly (sum of sinusoids, peak
speed ~0.5 m/s), sampled at 30 fps, plus Gaussian noise on every coordinate (sigma 4 mm). Metrics, all against
the noise-free truth:

* lag: the delay tau (frames, sub-frame) minimising the RMS of filtered(t) - true(t - tau) on the track;
* jitter (moving): RMS over frames and joints of |d(filtered) - d(true delayed by tau)|, d the frame-to-frame
  displacement, mm per frame (the lag itself is not counted as jitter);
* jitter (at rest): RMS of |d(filtered)| for the same hand held still, mm per frame;
* ramp lag: steady-state delay (frames) of a noise-free hand moving at a constant speed (0.1 and 0.5 m/s).

Run: ``python benchmarks/smoothing.py`` (a few seconds); tests/test_tracking.py checks the defaults with it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hamer.tracking import OneEuroFilter

FPS = 30.0
NOISE_M = 0.004


def true_track(frames: int = 300, seed: int = 0) -> np.ndarray:
    """(T, 21, 3) joints in metres: a rigid hand whose centre follows a sum of sinusoids."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    offsets = rng.normal(scale=0.04, size=(21, 3))
    centre = np.stack([0.10 * np.sin(2 * np.pi * 0.5 * t) + 0.03 * np.sin(2 * np.pi * 1.3 * t + 1.0),
                       0.06 * np.sin(2 * np.pi * 0.3 * t + 0.5),
                       0.5 + 0.05 * np.sin(2 * np.pi * 0.7 * t + 2.0)], axis=1)
    return centre[:, None, :] + offsets[None]


def noisy(track: np.ndarray, sigma: float = NOISE_M, seed: int = 1) -> np.ndarray:
    return track + np.random.default_rng(seed).normal(scale=sigma, size=track.shape)


def run_filter(make_filter: Callable[[], OneEuroFilter], samples: np.ndarray) -> np.ndarray:
    """Filter (T, ...) samples taken at FPS."""
    filt = make_filter()
    return np.stack([filt(x, i / FPS) for i, x in enumerate(samples)])


def delayed(truth: np.ndarray, tau: float) -> np.ndarray:
    """``truth`` delayed by ``tau`` frames (linear interpolation; the first sample held)."""
    frames = np.arange(len(truth), dtype=np.float64)
    flat = truth.reshape(len(truth), -1)
    return np.stack([np.interp(frames - tau, frames, flat[:, k]) for k in range(flat.shape[1])], 1).reshape(truth.shape)


def jitter_mm(estimate: np.ndarray, truth: np.ndarray, skip: int = 30) -> float:
    """RMS of |d(estimate) - d(truth)| over frames (after ``skip``) and joints, mm per frame."""
    err = np.diff(estimate[skip:], axis=0) - np.diff(truth[skip:], axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=-1))) * 1000)


def lag_frames(estimate: np.ndarray, truth: np.ndarray, max_lag: float = 10.0, skip: int = 30) -> float:
    """The delay (frames, 0.05 steps) that best aligns ``estimate`` with the delayed ``truth``."""
    errors = [np.mean((estimate[skip:] - delayed(truth, tau)[skip:]) ** 2) for tau in np.arange(0.0, max_lag, 0.05)]
    return float(np.argmin(errors) * 0.05)


def ramp_lag_frames(make_filter: Callable[[], OneEuroFilter], speed: float, frames: int = 120) -> float:
    """Steady-state delay (frames) of a noise-free point moving at ``speed`` m/s."""
    x = speed * np.arange(frames) / FPS
    out = run_filter(make_filter, x[:, None])[:, 0]
    return float((x[-1] - out[-1]) / (speed / FPS))


def measure(min_cutoff: float, beta: float) -> dict[str, float]:
    """Lag and jitter (raw and filtered) on the track, jitter at rest, ramp lags, for one parameter pair."""
    make = lambda: OneEuroFilter(min_cutoff, beta)  # noqa: E731
    truth = true_track()
    samples = noisy(truth)
    filtered = run_filter(make, samples)
    lag = lag_frames(filtered, truth)
    still = np.repeat(truth[:1], len(truth), axis=0)
    still_samples = noisy(still, seed=2)
    return {
        "lag": lag,
        "jitter_raw": jitter_mm(samples, truth),
        "jitter": jitter_mm(filtered, delayed(truth, lag)),
        "rest_jitter_raw": jitter_mm(still_samples, still),
        "rest_jitter": jitter_mm(run_filter(make, still_samples), still),
        "ramp_lag_slow": ramp_lag_frames(make, 0.1),
        "ramp_lag_fast": ramp_lag_frames(make, 0.5),
    }


def main() -> None:
    print(f"synthetic track: 21 joints, {FPS:g} fps, noise sigma {NOISE_M * 1000:g} mm per coordinate, "
          "peak speed ~0.5 m/s")
    print("| min_cutoff Hz | beta s/m | jitter moving mm/frame | jitter at rest mm/frame | lag frames | "
          "ramp lag 0.1 / 0.5 m/s, frames |")
    print("|---|---|---|---|---|---|")
    for min_cutoff in (0.5, 1.0, 2.0):
        for beta in (0.0, 5.0, 10.0, 20.0, 50.0):
            m = measure(min_cutoff, beta)
            print(f"| {min_cutoff:g} | {beta:g} | {m['jitter_raw']:.1f} -> {m['jitter']:.1f} | "
                  f"{m['rest_jitter_raw']:.1f} -> {m['rest_jitter']:.1f} | {m['lag']:.2f} | "
                  f"{m['ramp_lag_slow']:.2f} / {m['ramp_lag_fast']:.2f} |")


if __name__ == "__main__":
    main()
