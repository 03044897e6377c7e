"""Student-t fitted by maximum likelihood in all three parameters, batched over rows of sorted,
standardised samples z (k, n). The likelihood is smooth in θ = (μ, log σ, log ν): Newton's method
with analytic first and second derivatives, the Hessian made negative definite where it is not,
and a backtracking line search, so that every step raises the likelihood. Where it still rises
at ν = 1e8, or for a platykurtic sample past ν = 100 (where ℓ ≈ ℓ_normal + n·κ/(4ν) with κ ≤ 0
rises to the normal's), the supremum is the normal limit ν = ∞, returned as such. Below
`df_floor` the likelihood has no maximum (it grows without bound as σ → 0 at a repeated value),
so df is kept above it and a fit stopped there is 'bounded'."""
from __future__ import annotations

import numpy as np
from scipy import special

from lorascope.analysis import mle as _mle

__all__ = ["fit_t", "t_loglik", "df_floor"]

_NU_MAX = 1e8  # beyond this the t likelihood differs from the normal's by < n·1e-8 nats


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
    normal = _mle.normal_loglik(z)
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
    for _ in range(_mle.ITERATIONS):
        act = np.flatnonzero(~done)
        if not len(act):
            break
        za, th = z[act], theta[act]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lla, g, H = _t_derivatives(za, th)
            step = _mle.ascent_step(g, H)
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
        fin = (_mle.converged(dec, lla, n) | limit) & ~bad
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
