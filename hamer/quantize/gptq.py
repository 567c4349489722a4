"""GPTQ rounding (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023) of one weight matrix onto a given integer grid.

Round-to-nearest rounds every weight on its own. GPTQ rounds the weights of one input row at a time and moves the
rows not yet rounded to cancel, as far as the calibration inputs can tell, the error just made: it minimizes
``||X @ (W_q - W)||^2`` over the calibration inputs ``X`` (M, K) through the Hessian ``H = X^T X`` (K, K). Rows are
taken in order of decreasing ``H`` diagonal ("act order"); the inverse Hessian is damped by a fraction of its mean
diagonal, and updated lazily in blocks of rows, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch

DAMPING = 0.01  # fraction of the mean diagonal of H added to it (the paper's default)
BLOCK_ROWS = 128  # rows rounded between two updates of the rest (the paper's lazy batch)


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int,
               qmax: int, damping: float = DAMPING, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Integers (K, N) for ``weight`` (K, N), the layer ``y = x @ weight`` (K inputs, N outputs), on the grid
    ``(q - zero_point) * scale`` with per-output ``scale``/``zero_point`` (N,) and ``qmin <= q <= qmax``.

    ``hessian``: ``sum x^T x`` (K, K) over the calibration inputs ``x`` (rows of K). An input never active on them
    (zero diagonal) is rounded to nearest. With a diagonal ``hessian`` the result is round-to-nearest. Returns
    int64; the caller casts to the grid's type.
    """
    k, n = weight.shape
    if hessian.shape != (k, k) or scale.shape != (n,) or zero_point.shape != (n,):
        raise ValueError(f"shapes: weight {weight.shape}, hessian {hessian.shape}, scale {scale.shape}, "
                         f"zero point {zero_point.shape}")
    h = np.array(hessian, dtype=np.float64)
    dead = np.diagonal(h) == 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diagonal(h), kind="stable")
    h = h[order][:, order]
    h[np.diag_indices(k)] += damping * np.diagonal(h).mean()
    # upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U gives the update of rows > i after rounding row i
    factor = torch.linalg.cholesky(torch.from_numpy(h))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True).numpy()
    w = np.array(weight, dtype=np.float64)[order]
    scale = scale.astype(np.float64)
    zero = zero_point.astype(np.float64)
    q = np.empty((k, n), dtype=np.int64)
    for start in range(0, k, block_rows):
        stop = min(start + block_rows, k)
        rows = w[start:stop]  # a view: updated in place as its rows are rounded
        errors = np.empty_like(rows)
        u = upper[start:stop, start:stop]
        for i in range(stop - start):
            rounded = np.clip(np.rint(rows[i] / scale) + zero, qmin, qmax)
            q[start + i] = rounded
            errors[i] = (rows[i] - (rounded - zero) * scale) / u[i, i]
            rows[i + 1:] -= np.outer(u[i, i + 1:], errors[i])
        w[stop:] -= upper[start:stop, stop:].T @ errors
    out = np.empty_like(q)
    out[order] = q
    return out
