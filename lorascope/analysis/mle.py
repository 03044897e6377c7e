"""Maximum likelihood for the two families with a shape parameter, batched over rows of sorted,
standardised samples z (k, n): Student-t with free location, scale and degrees of freedom, and
the generalised normal with free location, scale and shape β. Each returns its parameters, the
log-likelihood of z and whether the fit converged (a fit that did not is never ranked).

The t likelihood is smooth in (μ, log σ, log ν): Newton's method with analytic derivatives, a
Hessian made negative definite where it is not, and a backtracking line search, so that every
step raises the likelihood. Where the likelihood still rises at ν = 1e8 the supremum is the
normal limit (ν = ∞), which is returned as such.

The generalised normal's scale is profiled out in closed form (σ^β = β·mean|z − μ|^β), leaving
(μ, β). For β ≥ 1, Σ|z − μ|^β is convex in μ: its minimiser μ̂(β) is found by a bracketed Newton
iteration, and the profile P(β) = ℓ(μ̂(β), β) by Newton in log β with exact first and second
derivatives (the envelope theorem gives dP/dβ = ∂ℓ/∂β at μ̂). For β < 1 the sum is concave
between data points, so μ̂ is a data point: a branch-and-bound search finds the best one
exactly, alternating with Newton in β (rows needing it are few and taken one at a time). Where
P still rises at β = 1e4 the supremum is the uniform limit (β = ∞) on [min z, max z]."""
from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["fit_t", "t_loglik", "fit_gennorm", "gennorm_loglik", "NORMAL_LOGLIK"]

_ITERATIONS = 100
_NU_MAX = 1e8         # beyond this the t likelihood differs from the normal's by < n·1e-8 nats
_BETA_MAX = 1e4       # beyond this the generalised normal's differs from the uniform limit's by < n·1e-3
_BETA_MIN = 0.02      # below this the density is a spike: a fit stopped there is 'bounded', not ranked
_NORMAL_CONST = 0.5 * (np.log(2 * np.pi) + 1.0)


def NORMAL_LOGLIK(z: np.ndarray) -> np.ndarray:
    """The normal MLE's log-likelihood of rows z: −n/2·(log 2πσ² + 1) with σ the population std."""
    n = z.shape[1]
    return -n * (np.log(z.std(axis=1)) + _NORMAL_CONST)


def _converged(decrement: np.ndarray, ll: np.ndarray, n: int) -> np.ndarray:
    """Newton's decrement g·step estimates twice the log-likelihood still to gain: stop below
    1e-10 of the log-likelihood's size (1e-4 of the 1e-6 relative agreement asked of a fit)."""
    return decrement <= 1e-10 * np.maximum(np.abs(ll), n)


def _ascent_step(g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """−H⁻¹g with H's eigenvalues replaced by −max(|λ|, floor): Newton's step where H is negative
    definite, an ascent direction scaled by the curvature's size where it is not."""
    lam, V = np.linalg.eigh(H)
    floor = 1e-10 * np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300)
    lam = -np.maximum(np.abs(lam), floor)
    return -np.einsum("kij,kj,klj,kl->ki", V, 1.0 / lam, V, g)


# --- Student-t ---------------------------------------------------------------------------------

def _lgamma_half_step(x: np.ndarray) -> np.ndarray:
    """log Γ(x + ½) − log Γ(x) as log Γ(½) − log B(x, ½): the difference of two lgamma values
    near 4e8 at ν = 1e9 loses 1e-8 of its ~9, which times n = 2048 moved a likelihood by 1e-4 nats
    and made a t with ν = 5e7 look likelier than its own normal limit; betaln keeps 1e-16."""
    return special.gammaln(0.5) - special.betaln(x, 0.5)


def t_loglik(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """Σ log t_ν((z − μ)/σ)/σ per row; ν = ∞ rows are the normal's."""
    n = z.shape[1]
    inf = ~np.isfinite(nu)
    nu_c = np.where(inf, 1.0, nu)
    u = (z - mu[:, None]) / sigma[:, None]
    const = _lgamma_half_step(0.5 * nu_c) - 0.5 * np.log(nu_c * np.pi)
    ll = n * (const - np.log(sigma)) - 0.5 * (nu_c + 1) * np.log1p(u * u / nu_c[:, None]).sum(axis=1)
    if inf.any():
        ui = u[inf]
        ll[inf] = -n * (np.log(sigma[inf]) + 0.5 * np.log(2 * np.pi)) - 0.5 * (ui * ui).sum(axis=1)
    return ll


def _t_derivatives(z: np.ndarray, theta: np.ndarray):
    """log-likelihood, gradient (k, 3) and Hessian (k, 3, 3) in θ = (μ, log σ, log ν)."""
    n = z.shape[1]
    mu, sigma, nu = theta[:, 0], np.exp(theta[:, 1]), np.exp(theta[:, 2])
    u = (z - mu[:, None]) / sigma[:, None]
    q = u * u / nu[:, None]
    r = 1.0 / (1.0 + q)
    logw = np.log1p(q)
    s_ur, s_qr, s_logw = (u * r).sum(1), (q * r).sum(1), logw.sum(1)
    r2 = r * r
    s_ur2, s_qr2, s_r, s_uqr2 = (u * r2).sum(1), (q * r2).sum(1), r.sum(1), (u * q * r2).sum(1)
    h0, h1 = 0.5 * nu, 0.5 * (nu + 1)
    const = _lgamma_half_step(h0) - 0.5 * np.log(nu * np.pi)
    ll = n * (const - np.log(sigma)) - h1 * s_logw
    dpsi, dpsi1 = special.digamma(h1) - special.digamma(h0), special.polygamma(1, h1) - special.polygamma(1, h0)
    g = np.stack([
        (nu + 1) / (sigma * nu) * s_ur,
        -n + (nu + 1) * s_qr,
        n * h0 * dpsi - 0.5 * n - h0 * s_logw + h1 * s_qr,
    ], axis=1)
    H = np.empty((len(z), 3, 3))
    H[:, 0, 0] = (nu + 1) / (sigma**2 * nu) * (2 * s_qr2 - s_r)
    H[:, 0, 1] = -2 * (nu + 1) / (sigma * nu) * s_ur2
    H[:, 0, 2] = (-s_ur / nu + (nu + 1) / nu * s_uqr2) / sigma
    H[:, 1, 1] = -2 * (nu + 1) * s_qr2
    H[:, 1, 2] = nu * s_qr - (nu + 1) * s_qr2
    H[:, 2, 2] = n * h0 * dpsi + n * h0 * h0 * dpsi1 - h0 * s_logw + nu * s_qr - h1 * s_qr2
    H[:, 1, 0], H[:, 2, 0], H[:, 2, 1] = H[:, 0, 1], H[:, 0, 2], H[:, 1, 2]
    return ll, g, H


def _t_start(z: np.ndarray) -> np.ndarray:
    """(μ, log σ, log ν) from the sample: the median, the MAD and ν from the excess kurtosis κ
    (6/(ν − 4) for ν > 4). Where κ ≤ 0 the normal limit ν = ∞ is already a local maximum (at
    ν = ∞, ∂ℓ/∂(1/ν) = n·κ/4 for the standardised sample), so the search starts at ν = 1 to find
    a finite one if there is any; the two are compared at the end. z has mean 0 and std 1."""
    n = z.shape[1]
    med = 0.5 * (z[:, (n - 1) // 2] + z[:, n // 2])
    mad = np.median(np.abs(z - med[:, None]), axis=1)
    kurt = (z**4).mean(axis=1) - 3.0
    nu = np.where(kurt > 0, np.clip(4.0 + 6.0 / np.maximum(kurt, 1e-12), 2.1, 100.0), 1.0)
    sigma = np.where(mad > 0, mad / special.stdtrit(nu, 0.75), 1.0)
    return np.stack([med, np.log(sigma), np.log(nu)], axis=1)


def df_floor(z: np.ndarray) -> np.ndarray:
    """The smallest df the t fit considers, per row of sorted z: 2·n₁/(n − n₁), n₁ the largest
    number of equal values. The t likelihood has no maximum below n₁/(n − n₁): with μ at a value
    repeated n₁ times it grows like (−n₁ + (n − n₁)·df)·log σ → ∞ as σ → 0 (n₁ = 1 for distinct
    values), so the fit is restricted to twice that, and a fit stopped there is 'bounded'."""
    k, n = z.shape
    # the longest run of equal values per row: the gaps between positions where a run starts
    starts = np.ones((k, n + 1), dtype=bool)
    starts[:, 1:n] = z[:, 1:] != z[:, :-1]
    row, col = np.nonzero(starts)
    same = row[1:] == row[:-1]
    n1 = np.ones(k, dtype=np.int64)
    np.maximum.at(n1, row[:-1][same], np.diff(col)[same])
    return 2.0 * n1 / np.maximum(n - n1, 1)


def fit_t(z: np.ndarray, start: dict[str, np.ndarray] | None = None):
    """Student-t MLE per row of sorted z: ({"df", "loc", "scale"}, loglik, converged, bounded),
    df in [df_floor(z), ∞]. `start` (the previous snapshot's optimum, in z's units) replaces the
    moment-based start where finite. `bounded` rows stopped at the df floor."""
    k, n = z.shape
    c_min = np.log(df_floor(z))
    theta = _t_start(z)
    normal = NORMAL_LOGLIK(z)
    # where κ ≤ 0, ℓ ≈ ℓ(normal) + n·κ/(4ν) for large ν: rising towards the normal limit and below
    # it, with no maximum beyond; a search past ν = 100 still rising and below it has found that
    platykurtic = (z**4).mean(axis=1) <= 3.0
    if start is not None:
        s = np.stack([start["loc"], np.log(start["scale"]), np.log(np.minimum(start["df"], _NU_MAX))], axis=1)
        theta = np.where(np.isfinite(s), s, theta)
    theta[:, 2] = np.maximum(theta[:, 2], c_min)
    ll = np.full(k, -np.inf)
    done = np.zeros(k, dtype=bool)
    conv = np.zeros(k, dtype=bool)
    at_cap = np.zeros(k, dtype=bool)
    at_floor = np.zeros(k, dtype=bool)
    c_max = np.log(_NU_MAX)
    for _ in range(_ITERATIONS):
        act = np.flatnonzero(~done)
        if not len(act):
            break
        za, th = z[act], theta[act]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lla, g, H = _t_derivatives(za, th)
            step = _ascent_step(g, H)
        # at ν's cap with the likelihood still rising towards ν = ∞: the normal limit decides;
        # at its floor with the likelihood rising towards 0: bounded
        capped = (th[:, 2] >= c_max) & (g[:, 2] > 0)
        floored = (th[:, 2] <= c_min[act]) & (g[:, 2] < 0)
        step[capped | floored, 2] = 0.0
        # beyond ν = 100 the likelihood still rising in ν with no curvature against it is heading
        # for the normal limit: take the longest step the line search allows there
        rising = (th[:, 2] > np.log(100.0)) & (g[:, 2] > 0) & (H[:, 2, 2] >= 0) & ~capped
        step[rising, 2] = 6.0
        # at most 2 in μ (z units) and log σ, 6 in log ν (flat towards ν = ∞: long steps are safe)
        big = np.maximum(np.abs(step[:, :2]).max(axis=1) / 2.0, np.abs(step[:, 2]) / 6.0)
        step /= np.maximum(big, 1.0)[:, None]
        dec = (g * step).sum(axis=1)
        ll[act] = lla
        bad = ~np.isfinite(dec)
        limit = platykurtic[act] & (th[:, 2] > np.log(100.0)) & (g[:, 2] > 0) & (lla <= normal[act])
        fin = (_converged(dec, lla, n) | limit) & ~bad
        at_cap[act], at_floor[act] = capped, floored
        alpha = np.ones(len(act))
        todo = ~fin & ~bad
        level = np.zeros(len(act), dtype=bool)  # rows whose gain is below the likelihood's rounding
        for _ in range(40):  # backtracking: halve until the likelihood rises enough
            if not todo.any():
                break
            cand = th[todo] + alpha[todo, None] * step[todo]
            cand[:, 2] = np.clip(cand[:, 2], c_min[act[todo]], c_max)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                new = t_loglik(za[todo], cand[:, 0], np.exp(cand[:, 1]), np.exp(cand[:, 2]))
            ok = np.isfinite(new) & (new >= lla[todo] + 1e-4 * alpha[todo] * dec[todo])
            # a gain below the likelihood's rounding cannot be seen: that row is done
            flat = ~ok & (np.abs(new - lla[todo]) <= 1e-13 * np.abs(lla[todo])) & (dec[todo] <= 1e-9 * np.abs(lla[todo]))
            idx = np.flatnonzero(todo)
            todo[idx[flat]], level[idx[flat]] = False, True
            th[idx[ok]] = cand[ok]
            ll[act[idx[ok]]] = new[ok]
            alpha[idx[~ok]] *= 0.5
            todo[idx[ok]] = False
        # no step raised the likelihood: as close as floating point gets when the decrement is
        # already small, a failure otherwise
        theta[act] = th
        done[act] = fin | todo | bad | level
        conv[act] = fin | level | (todo & (dec <= 1e-6 * np.maximum(np.abs(lla), n)))
    converged = conv
    # the normal limit ν = ∞ where it is at least as likely (the likelihood rose all the way)
    to_normal = (normal >= ll) | at_cap
    ll = np.where(to_normal, np.maximum(normal, ll), ll)
    params = {"df": np.where(to_normal, np.inf, np.exp(theta[:, 2])),
              "loc": np.where(to_normal, z.mean(axis=1), theta[:, 0]),
              "scale": np.where(to_normal, z.std(axis=1), np.exp(theta[:, 1]))}
    return params, ll, converged | to_normal, at_floor & ~to_normal


# --- generalised normal ---------------------------------------------------------------------------

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
    k, n = z.shape
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
        ll, lb, lbb, (d, D, t, logt, tb, s0, loga) = _gn_fixed_mu(z, mu, beta)
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
    β = 0.02."""
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
    for _ in range(_ITERATIONS):
        act = np.flatnonzero(~done)
        if not len(act):
            break
        g, h, b = pb[act], pbb[act], lb_[act]
        step = np.where(h < 0, -g / np.where(h < 0, h, -1.0), np.sign(g))
        step = np.clip(step, -1.5, 1.5)
        step = np.clip(b + step, 0.0, b_max) - b
        dec = g * step
        fin = _converged(np.abs(dec), ll[act], n) | (step == 0)
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
    a fixed data point μ (β in [0.02, 1]) and the best data point for that β, each raising ℓ,
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
        for _ in range(_ITERATIONS):
            ll0, lb, lbb = at(mu, beta)
            g, h, b = beta * lb, beta * beta * lbb + beta * lb, np.log(beta)
            step = float(np.clip(-g / h if h < 0 else np.sign(g), -1.0, 1.0))
            step = float(np.clip(b + step, np.log(_BETA_MIN), 0.0) - b)
            if step == 0 or _converged(np.array([abs(g * step)]), np.array([ll0]), n)[0]:
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
