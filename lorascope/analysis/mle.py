"""What the two maximum-likelihood fits with a shape parameter share (`mle_t`: Student-t with
free location, scale and df; `mle_gennorm`: the generalised normal with free location, scale and
β): rows of sorted, standardised samples z (k, n), Newton's method with a backtracking line
search that only accepts steps raising the likelihood, and when to stop. A fit says whether it
converged; one that did not is never ranked against the others (`fits`)."""
from __future__ import annotations

import numpy as np

__all__ = ["ITERATIONS", "converged", "ascent_step", "normal_loglik"]

ITERATIONS = 100  # Newton steps at most (read at call time, so that a test can lower it)
_NORMAL_CONST = 0.5 * (np.log(2 * np.pi) + 1.0)


def normal_loglik(z: np.ndarray) -> np.ndarray:
    """The normal MLE's log-likelihood of rows z: −n/2·(log 2πσ² + 1) with σ the population std."""
    n = z.shape[1]
    return -n * (np.log(z.std(axis=1)) + _NORMAL_CONST)


def converged(decrement: np.ndarray, ll: np.ndarray, n: int) -> np.ndarray:
    """Newton's decrement g·step estimates twice the log-likelihood still to gain: stop below
    1e-10 of the log-likelihood's size (1e-4 of the 1e-6 relative agreement asked of a fit)."""
    return decrement <= 1e-10 * np.maximum(np.abs(ll), n)


def ascent_step(g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """−H⁻¹g with H's eigenvalues replaced by −max(|λ|, floor): Newton's step where H is negative
    definite, an ascent direction scaled by the curvature's size where it is not."""
    lam, V = np.linalg.eigh(H)
    floor = 1e-10 * np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300)
    lam = -np.maximum(np.abs(lam), floor)
    return -np.einsum("kij,kj,klj,kl->ki", V, 1.0 / lam, V, g)
