"""The generalised normal fitted by maximum likelihood in all three parameters (location, scale,
shape β), batched over rows of sorted, standardised samples z (k, n). The scale is profiled out
in closed form (σ^β = β·mean|z − μ|^β), leaving (μ, β):
- β ≥ 1: Σ|z − μ|^β is convex in μ, and its minimiser μ̂(β) is found by Newton's method on the
  balance of the pulls from above and below, inside a bracket. The profile P(β) = ℓ(μ̂(β), β) is
  evaluated on a grid of β, and Newton in log β (exact derivatives: the envelope theorem gives
  dP/dβ = ∂ℓ/∂β at μ̂) climbs from the grid's best peak and its second best (the profile of a
  platykurtic sample can have a maximum near β ≈ 10 and a rise towards β = ∞).
- β < 1: the sum is concave between data points, so μ̂ is a data point, found exactly by branch
  and bound, alternating with Newton in β (rows needing it are few and taken one at a time).
- Where P still rises at β = 1e4, the supremum is the uniform limit β = ∞ on [min z, max z],
  returned as such."""
from __future__ import annotations

import numpy as np
from scipy import special

from lorascope.analysis import mle as _mle

__all__ = ["fit_gennorm", "gennorm_loglik"]

_BETA_MAX = 1e4   # beyond this the likelihood differs from the uniform limit's by < n·1e-3 nats
# Below this the density is a spike (Γ(1/β) > 3·10^5), whose scale, σ ≈ (β·mean|z − μ|^β)^(1/β),
# falls below 1e-10 of the data's spread: a fit stopped there is 'bounded', not ranked
_BETA_MIN = 0.1


def gennorm_loglik(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Σ log of β/(2σΓ(1/β))·exp(−|(z − μ)/σ|^β) per row; β = ∞ rows are the uniform on
    [μ − σ, μ + σ] (−inf if a value lies outside)."""
    n = z.shape[1]
    b = np.where(np.isfinite(beta), beta, 1.0)
    a = np.abs(z - mu[:, None]) / sigma[:, None]
    ll = n * (np.log(b) - np.log(2 * sigma) - special.gammaln(1.0 / b)) - (a ** b[:, None]).sum(axis=1)
    inside = (a <= 1.0 + 1e-12).all(axis=1)
    uniform = np.where(inside, -n * np.log(2 * sigma), -np.inf)
    return np.where(np.isfinite(beta), ll, uniform)


def _powers(z: np.ndarray, mu: np.ndarray, beta: np.ndarray):
    """d = z − μ, D = max|d| per row, t = |d|/D ∈ [0, 1], log t (−inf at 0) and t^β, so that
    |d|^β = D^β t^β never overflows or underflows as a whole."""
    d = z - mu[:, None]
    a = np.abs(d)
    D = a.max(axis=1)
    D = np.where(D > 0, D, 1.0)
    t = a / D[:, None]
    with np.errstate(divide="ignore"):
        logt = np.log(t)
    tb = np.exp(beta[:, None] * logt)
    return d, D, t, logt, tb


def _profile_loglik(n: int, beta: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """ℓ at the profiled scale: n[log β − log 2 − lgamma(1/β) − 1/β − log(βS/n)/β], log S given."""
    L = np.log(beta) + log_s - np.log(n)
    return n * (np.log(beta) - np.log(2.0) - special.gammaln(1.0 / beta) - 1.0 / beta - L / beta)


def _gn_fixed_mu(z: np.ndarray, mu: np.ndarray, beta: np.ndarray):
    """ℓ, ∂ℓ/∂β and ∂²ℓ/∂β² at fixed μ (σ profiled), and the pieces the profile needs."""
    n = z.shape[1]
    d, D, t, logt, tb = _powers(z, mu, beta)
    s0 = tb.sum(axis=1)
    logD = np.log(D)
    loga = np.where(t > 0, logt, 0.0) + logD[:, None]
    w = tb / s0[:, None]                                   # weights a^β / S (zero where a = 0)
    m = (w * loga).sum(axis=1)                             # S_β / S
    v = np.maximum((w * loga * loga).sum(axis=1) - m * m, 0.0)  # S_ββ / S − m²
    log_s = beta * logD + np.log(s0)
    ll = _profile_loglik(n, beta, log_s)
    L = np.log(beta) + log_s - np.log(n)
    psi, psi1 = special.digamma(1.0 / beta), special.polygamma(1, 1.0 / beta)
    lb = n * (1.0 / beta + (psi + L) / beta**2 - m / beta)
    lbb = n * (-1.0 / beta**2 + (-psi1 / beta**2 + 1.0 / beta + m) / beta**2 - 2 * (psi + L) / beta**3
               - (v / beta - m / beta**2))
    return ll, lb, lbb, (d, D, t, logt, tb, s0, loga)


def _gn_mu(z: np.ndarray, beta: np.ndarray, mu0: np.ndarray, iterations: int = 200) -> np.ndarray:
    """argmin_μ S(μ) = Σ|z − μ|^β for β ≥ 1 per row (β = 1: the median). S is convex, so the
    minimum is where the pull from above balances the pull from below:
    g(μ) = log Σ_{z>μ} (z − μ)^(β−1) − log Σ_{z<μ} (μ − z)^(β−1) = 0, g falling in μ. Newton's
    method on g, with g' = −(β−1)·(E₊[1/|z − μ|] + E₋[1/|z − μ|]) (weights (z − μ)^(β−1)), inside
    a bracket that every evaluation narrows, bisecting where Newton's step leaves it. On g's log
    scale the step is good for every β: for β = 1e4, S' itself spans 10^4 orders of magnitude
    between the two ends and Newton on S would creep by 1/β of the distance per step."""
    n = z.shape[1]
    lo, hi = z[:, 0].copy(), z[:, -1].copy()
    mu = np.clip(mu0, lo, hi)
    one = beta <= 1.0 + 1e-9
    mu = np.where(one, 0.5 * (z[:, (n - 1) // 2] + z[:, n // 2]), mu)
    tol = 1e-13 * np.maximum(hi - lo, 1e-300)
    act = np.flatnonzero(~one & (hi > lo))
    for _ in range(iterations):
        if not len(act):
            break
        b, m = beta[act], mu[act]
        d = z[act] - m[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            a = np.abs(d)
            e = (b[:, None] - 1) * np.log(a)           # log of each pull, −inf at d = 0
            pos = d > 0
            neg = d < 0
            Mp = np.where(pos, e, -np.inf).max(axis=1)
            Mn = np.where(neg, e, -np.inf).max(axis=1)
            w = np.exp(e - np.where(pos, Mp[:, None], Mn[:, None]))  # each side scaled by its largest
            wa = w / a
            tp, tn = (w * pos).sum(axis=1), (w * neg).sum(axis=1)
            ip, inn = (wa * pos).sum(axis=1) / tp, (wa * neg).sum(axis=1) / tn
            g = (Mp + np.log(tp)) - (Mn + np.log(tn))  # +inf: nothing below μ, −inf: nothing above
            newton = m + g / ((b - 1) * (ip + inn))
        up = g > 0
        lo[act], hi[act] = np.where(up, m, lo[act]), np.where(up, hi[act], m)
        L, H = lo[act], hi[act]
        inside = np.isfinite(newton) & (newton > L) & (newton < H)
        nxt = np.where(g == 0, m, np.where(inside, newton, 0.5 * (L + H)))
        mu[act] = nxt
        keep = (np.abs(nxt - m) > tol[act]) & (H - L > tol[act]) & (g != 0)
        act = act[keep]
    return mu


def _gn_profile(z: np.ndarray, beta: np.ndarray, mu0: np.ndarray, iterations: int = 200):
    """P(β) = max_μ ℓ(μ, β) for β ≥ 1, and dP/d log β, d²P/d(log β)² at μ̂ (envelope theorem).
    With few `iterations` of the inner solve, ℓ at a μ near μ̂: a lower bound of P."""
    mu = _gn_mu(z, beta, mu0, iterations)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ll, lb, lbb, (d, D, t, _, tb, s0, loga) = _gn_fixed_mu(z, mu, beta)
        n = z.shape[1]
        b = beta[:, None]
        live = t > 0  # a value at μ: sign 0 in S_βμ; t^(β−2) = ∞ there for β < 2 (S'' is infinite)
        tb1 = np.where(live, tb / t, 0.0)                                           # t^(β−1)
        tb2 = np.where(live, tb1 / t, np.where(b < 2, np.inf, np.where(b == 2, 1.0, 0.0)))
        sbm = -(np.sign(d) * tb1 * (b * loga + 1)).sum(axis=1) / (D * s0)          # S_βμ / S
        smm = (beta - 1) * tb2.sum(axis=1) / (D * D * s0)                           # S_μμ / (βS)
        lbm, lmm = -n * sbm / beta, -n * smm
        pbb = lbb - np.where(np.isfinite(lmm) & (lmm < 0), lbm * lbm / lmm, 0.0)
    return ll, beta * lb, beta * beta * pbb + beta * lb, mu


# The profile over β can have two maxima (platykurtic data: one near β ≈ 10, and a rise towards
# the uniform limit), so Newton starts from the best of these (log-spaced over [1, 1e4]).
_BETA_GRID = np.array([1.0, 1.5, 2.3, 4.0, 8.0, 20.0, 80.0, 500.0, 1e4])


def fit_gennorm(z: np.ndarray, start: dict[str, np.ndarray] | None = None):
    """Generalised-normal MLE per row of sorted z: ({"beta", "loc", "scale"}, loglik, converged,
    bounded). The profile is evaluated on a grid of β (and at `start`, the previous snapshot's
    optimum in z's units, where given); Newton starts from the most likely point and from the
    best other local maximum of the grid, and the better end wins. `bounded` rows stopped at
    β = 0.1."""
    k, n = z.shape
    grid = [(np.full(k, g), None) for g in _BETA_GRID]
    if start is not None:
        sb, sm = np.asarray(start["beta"], dtype=np.float64), np.asarray(start["loc"], dtype=np.float64)
        grid.append((np.where(np.isfinite(sb), np.clip(sb, 1.0, _BETA_MAX), 2.0), np.where(np.isfinite(sm), sm, 0.0)))
    evals, prev_mu = [], np.zeros(k)
    for b0, m0 in grid:  # each grid point's inner solve starts from the one before; only
        # choosing starts, it stops after a few steps (a lower bound of P, near it)
        ll, pb, pbb, mu = _gn_profile(z, b0, prev_mu if m0 is None else m0, iterations=3)
        prev_mu = mu
        evals.append((np.where(np.isfinite(ll), ll, -np.inf), pb, pbb, mu, b0))
    L = np.stack([e[0] for e in evals], axis=1)                       # (k, G)
    G = len(_BETA_GRID)
    peak = np.ones_like(L, dtype=bool)  # grid local maxima (the start point counts as one)
    peak[:, 1:G] &= L[:, 1:G] >= L[:, :G - 1]
    peak[:, :G - 1] &= L[:, :G - 1] >= L[:, 1:G]
    first = L.argmax(axis=1)
    second = np.where(peak & (np.arange(L.shape[1]) != first[:, None]), L, -np.inf).argmax(axis=1)
    rows = np.arange(k)
    mus, betas = np.stack([e[3] for e in evals], axis=1), np.stack([e[4] for e in evals], axis=1)
    ll, pb, pbb, mu, beta, converged = _gn_newton(z, mus[rows, first], betas[rows, first])
    other = np.flatnonzero(np.isfinite(L[rows, second]) & (second != first))
    if len(other):
        got = _gn_newton(z[other], mus[other, second[other]], betas[other, second[other]])
        better = got[0] > ll[other]
        for arr, new in zip((ll, pb, pbb, mu, beta, converged), got):
            arr[other[better]] = new[better]
    bounded = np.zeros(k, dtype=bool)
    # rows whose profile still falls at β = 1 towards β < 1: the data-point search, one row at a time
    below = np.flatnonzero((beta <= 1.0 + 1e-12) & (pb < 0))
    for i in below:
        got = _below_one(z[i])
        if got[2] > ll[i]:
            mu[i], beta[i], ll[i], bounded[i] = got
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        _, D, _, _, tb = _powers(z, mu, beta)
        log_sigma = (np.log(beta) + beta * np.log(D) + np.log(tb.sum(axis=1)) - np.log(n)) / beta
    # the uniform limit β = ∞ (loc the midrange, scale half the range) where it is at least as likely
    half = 0.5 * (z[:, -1] - z[:, 0])
    uniform = -n * np.log(2 * half)
    to_uniform = uniform >= ll
    params = {"beta": np.where(to_uniform, np.inf, beta),
              "loc": np.where(to_uniform, 0.5 * (z[:, 0] + z[:, -1]), mu),
              "scale": np.where(to_uniform, half, np.exp(log_sigma))}
    return params, np.where(to_uniform, uniform, ll), converged | to_uniform, bounded & ~to_uniform


def _gn_newton(z, mu, beta):
    """Newton in log β on the profile from the given points (rows), β kept in [1, 1e4], with a
    backtracking line search. Returns (ll, dP/d log β, d²P/d(log β)², μ, β, converged)."""
    k, n = z.shape
    ll, pb, pbb, mu = _gn_profile(z, beta, mu)
    b_max = np.log(_BETA_MAX)
    lb_ = np.log(beta)
    done = np.zeros(k, dtype=bool)
    converged = np.zeros(k, dtype=bool)
    for _ in range(_mle.ITERATIONS):
        act = np.flatnonzero(~done)
        if not len(act):
            break
        g, h, b = pb[act], pbb[act], lb_[act]
        step = np.where(h < 0, -g / np.where(h < 0, h, -1.0), np.sign(g))
        step = np.clip(step, -1.5, 1.5)
        step = np.clip(b + step, 0.0, b_max) - b
        dec = g * step
        fin = _mle.converged(np.abs(dec), ll[act], n) | (step == 0)
        converged[act[fin]] = True
        done[act[fin]] = True
        todo = ~fin
        alpha = np.ones(len(act))
        for _ in range(40):
            if not todo.any():
                break
            idx = np.flatnonzero(todo)
            rows = act[idx]
            cand = b[idx] + alpha[idx] * step[idx]
            nll, npb, npbb, nmu = _gn_profile(z[rows], np.exp(cand), mu[rows])
            ok = np.isfinite(nll) & (nll >= ll[rows] + 1e-4 * alpha[idx] * np.abs(dec[idx]))
            # a gain below the likelihood's rounding cannot be seen: that row is done
            flat = ~ok & (np.abs(nll - ll[rows]) <= 1e-13 * np.abs(ll[rows])) & \
                (np.abs(dec[idx]) <= 1e-9 * np.abs(ll[rows]))
            todo[idx[flat]] = False
            converged[rows[flat]] = done[rows[flat]] = True
            good = rows[ok]
            lb_[good], ll[good], pb[good], pbb[good], mu[good] = cand[ok], nll[ok], npb[ok], npbb[ok], nmu[ok]
            alpha[idx[~ok]] *= 0.5
            todo[idx[ok]] = False
        # no step raised P: as close as floating point gets when the decrement is already small
        stuck = np.flatnonzero(todo)
        converged[act[stuck]] = np.abs(dec[stuck]) <= 1e-6 * np.maximum(np.abs(ll[act[stuck]]), n)
        done[act[stuck]] = True
    return ll, pb, pbb, mu, np.exp(lb_), converged


def _best_data_point(z: np.ndarray, beta: float, block: int = 32) -> float:
    """The data point minimising Σ|z − μ|^β (β < 1: the minimum over μ lies at a data point),
    exactly, by branch and bound over blocks of consecutive sorted points: a block's bound is
    the sum over the points outside it of their distance to the block, which no μ inside beats."""
    n = len(z)
    starts = np.arange(0, n, block)
    ends = np.minimum(starts + block, n) - 1
    gap = np.maximum(np.maximum(z[starts][:, None] - z[None, :], z[None, :] - z[ends][:, None]), 0.0)
    bound = (gap**beta).sum(axis=1)
    best_val, best_mu = np.inf, z[n // 2]
    for j in np.argsort(bound):
        if bound[j] >= best_val:
            break  # every remaining block's bound is at least the best value found
        cand = z[starts[j]:ends[j] + 1]
        vals = (np.abs(z[None, :] - cand[:, None]) ** beta).sum(axis=1)
        i = int(np.argmin(vals))
        if vals[i] < best_val:
            best_val, best_mu = float(vals[i]), float(cand[i])
    return best_mu


def _below_one(z: np.ndarray):
    """(μ, β, ℓ, bounded) for one row whose profile wants β < 1: alternately Newton in log β at
    a fixed data point μ (β in [0.1, 1]) and the best data point for that β, each raising ℓ,
    until the point no longer changes."""
    n = len(z)
    row = z[None]

    def at(mu: float, beta: float):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ll, lb, lbb, _ = _gn_fixed_mu(row, np.array([mu]), np.array([beta]))
        return float(ll[0]), float(lb[0]), float(lbb[0])

    beta = 0.9
    mu = _best_data_point(z, beta)
    for _ in range(20):
        for _ in range(_mle.ITERATIONS):
            ll0, lb, lbb = at(mu, beta)
            g, h, b = beta * lb, beta * beta * lbb + beta * lb, np.log(beta)
            step = float(np.clip(-g / h if h < 0 else np.sign(g), -1.0, 1.0))
            step = float(np.clip(b + step, np.log(_BETA_MIN), 0.0) - b)
            if step == 0 or _mle.converged(np.array([abs(g * step)]), np.array([ll0]), n)[0]:
                break
            for _ in range(40):
                cand = float(np.exp(b + step))
                new = at(mu, cand)[0]
                if np.isfinite(new) and new >= ll0 + 1e-4 * abs(g * step):
                    beta = cand
                    break
                step *= 0.5
            else:
                break
        nxt = _best_data_point(z, beta)
        if nxt == mu:
            break
        mu = nxt
    return mu, beta, at(mu, beta)[0], beta <= _BETA_MIN * (1 + 1e-9)
