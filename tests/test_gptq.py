"""GPTQ rounding of one weight matrix (hamer.quantize.gptq), against expectations computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hamer.quantize.gptq import DAMPING, gptq_round


def _grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 grid of ``weight`` (K, N): scale max|w| / 127, zero point 0."""
    return np.abs(weight).max(axis=0) / 127, np.zeros(weight.shape[1])


def test_a_diagonal_hessian_gives_round_to_nearest() -> None:
    """Uncorrelated inputs: no row can cancel another's error, every weight is rounded on its own."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(300, 40))
    scale, zero = _grid(weight)
    hessian = np.diag(rng.uniform(0.1, 5.0, size=300))
    q = gptq_round(weight, hessian, scale, zero, -127, 127)
    np.testing.assert_array_equal(q, np.rint(weight / scale))


def test_two_inputs_by_hand() -> None:
    """K = 2: the first row (larger H diagonal) is rounded to nearest; the second is moved by the least-squares
    answer to the first's error, -H01 / H11 * e0 (H damped by 1% of its mean diagonal), then rounded."""
    weight = np.array([[0.30, -0.52, 0.11], [0.45, 0.20, -0.33]])
    scale, zero = np.array([0.1, 0.1, 0.1]), np.zeros(3)
    hessian = np.array([[4.0, 1.5], [1.5, 1.0]])
    damped = hessian + DAMPING * np.trace(hessian) / 2 * np.eye(2)
    q0 = np.rint(weight[0] / scale)
    error0 = q0 * scale - weight[0]
    q1 = np.rint((weight[1] - damped[0, 1] / damped[1, 1] * error0) / scale)
    np.testing.assert_array_equal(gptq_round(weight, hessian, scale, zero, -127, 127), np.stack([q0, q1]))
    # the second row first when its H diagonal is the larger ("act order"): the roles swap
    swapped = hessian[::-1, ::-1]
    damped = swapped + DAMPING * np.trace(swapped) / 2 * np.eye(2)
    q1 = np.rint(weight[1] / scale)
    error1 = q1 * scale - weight[1]
    q0 = np.rint((weight[0] - damped[1, 0] / damped[0, 0] * error1) / scale)
    np.testing.assert_array_equal(gptq_round(weight, swapped, scale, zero, -127, 127), np.stack([q0, q1]))


def test_correlated_inputs_cut_the_output_error_and_stay_on_the_grid() -> None:
    """Inputs of low rank plus noise (as a ViT's tokens): the layer output error on them is several times smaller
    than round-to-nearest's, on held-out inputs from the same distribution as well; integers stay in range."""
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(16, 256))

    def inputs(n: int) -> np.ndarray:
        return rng.normal(size=(n, 16)) @ mixing + 0.1 * rng.normal(size=(n, 256))

    weight = 0.02 * rng.normal(size=(256, 64))
    weight[3, 5] = 0.2  # an outlier sets channel 5's scale
    scale, zero = _grid(weight)
    fit, held = inputs(2000), inputs(2000)
    q = gptq_round(weight, fit.T @ fit, scale, zero, -127, 127)
    nearest = np.clip(np.rint(weight / scale), -127, 127)
    assert np.abs(q).max() <= 127 and np.mean(q != nearest) > 0.1
    for x in (fit, held):
        assert np.linalg.norm(x @ (q * scale - weight)) < 0.5 * np.linalg.norm(x @ (nearest * scale - weight))


def test_grid_with_zero_point_and_clipping() -> None:
    """An asymmetric uint8 grid (zero point 128): integers within [qmin, qmax], the zero point applied."""
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(50, 8))
    scale, zero = np.full(8, 0.01), np.full(8, 128.0)  # a range too small for the weights: clipped
    q = gptq_round(weight, np.eye(50), scale, zero, 0, 255)
    np.testing.assert_array_equal(q, np.clip(np.rint(weight / scale) + 128, 0, 255))


def test_inputs_never_active_are_rounded_to_nearest() -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(6, 4))
    scale, zero = _grid(weight)
    x = rng.normal(size=(50, 6))
    x[:, 2] = 0
    q = gptq_round(weight, x.T @ x, scale, zero, -127, 127)
    # row 2 sees no input (a zero H diagonal, not invertible as it is): nothing moves it, it is rounded to nearest
    np.testing.assert_array_equal(q[2], np.rint(weight[2] / scale))
    assert np.abs(q).max() <= 127


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"shapes: weight \(4, 3\), hessian \(3, 3\)"):
        gptq_round(np.zeros((4, 3)), np.eye(3), np.ones(3), np.zeros(3), -127, 127)


def _obq_reference(weight, hessian, scale, zero, qmin, qmax, damping=DAMPING):
    """GPTQ written the textbook way (Optimal Brain Quantization's update, no Cholesky, no lazy blocks): round the
    remaining input with the largest H diagonal first (ties: lowest index), move the others by
    -error * Hinv[i, j] / Hinv[i, i], then remove input i from the inverse Hessian."""
    h = hessian.astype(np.float64).copy()
    h[np.diag_indices(len(h))] += damping * np.diagonal(h).mean()
    order = sorted(range(len(h)), key=lambda i: (-hessian[i, i], i))
    hinv = np.linalg.inv(h)
    w = weight.astype(np.float64).copy()
    q = np.zeros(weight.shape)
    remaining = list(order)
    for i in order:
        q[i] = np.clip(np.rint(w[i] / scale) + zero, qmin, qmax)
        error = w[i] - (q[i] - zero) * scale
        remaining.remove(i)
        for j in remaining:
            w[j] -= error * hinv[i, j] / hinv[i, i]
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q


@pytest.mark.parametrize("block_rows", [1, 7, 16, 128])
def test_equals_the_textbook_algorithm(block_rows: int) -> None:
    """Same integers as the un-blocked OBQ form, whatever the lazy block size; an asymmetric grid; Hessian
    diagonals with ties (equal inputs: the lower index first) and far from 1 (the damping scales with them)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 40)) * 30 + rng.normal(size=(80, 40))
    x[:, 20:25] = x[:, 15:20]  # five pairs of equal inputs: equal diagonals
    weight = rng.normal(size=(40, 12))
    scale = (weight.max(0) - weight.min(0)) / 255
    zero = np.rint(-weight.min(0) / scale)
    hessian = x.T @ x
    q = gptq_round(weight, hessian, scale, zero, 0, 255, block_rows=block_rows)
    np.testing.assert_array_equal(q, _obq_reference(weight, hessian, scale, zero, 0, 255))
    assert q.dtype == np.int64


def test_integer_inputs_are_taken_as_float64() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=(30, 8))
    weight = rng.integers(-50, 50, size=(8, 5))
    scale, zero = np.full(5, 3.0), np.zeros(5)
    expected = gptq_round(weight.astype(np.float64), (x.T @ x).astype(np.float64), scale, zero, -127, 127)
    np.testing.assert_array_equal(gptq_round(weight, x.T @ x, scale, zero, -127, 127), expected)


def test_no_active_input_at_all_is_round_to_nearest() -> None:
    weight = np.random.default_rng(6).normal(size=(5, 3))
    scale, zero = _grid(weight)
    np.testing.assert_array_equal(gptq_round(weight, np.zeros((5, 5)), scale, zero, -127, 127),
                                  np.rint(weight / scale))


@pytest.mark.parametrize("shapes", [((4, 4), (3,), (3,)), ((3, 3), (2,), (3,)), ((3, 3), (3,), (1,))])
def test_each_shape_is_checked(shapes) -> None:
    hessian, scale, zero = (np.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=r"shapes: weight \(3, 3\)"):
        gptq_round(np.zeros((3, 3)), hessian, scale, zero, -127, 127)
