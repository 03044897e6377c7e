"""Distribution fits per snapshot, batched over the time axis: normal, uniform, Laplace,
logistic, Student-t and the generalised normal (whose shape β moves from Laplace (1) through
normal (2) towards uniform (→∞), one number for the 'uniform at init → Gaussian' story).

Every family is fitted by maximum likelihood on the standardised values z = (x − mean)/std (so
huge or tiny weights cannot overflow), in closed form where one exists, by vectorised Newton
steps for the logistic, and by a profile over the shape parameter on a grid refined by a
parabola for Student-t and the generalised normal (scipy's generic `t.fit` costs ~0.2 s per call).
Matrices that are all zeros, constant, non-finite or too small are named, not fitted."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

from lorascope.analysis.batch import as_stack, entry_subset, time_chunks
from lorascope.errors import UsageError
from lorascope.registry import Registry

__all__ = [
    "Family",
    "FAMILIES",
    "FitResult",
    "MIN_VALUES",
    "fit_snapshots",
    "ks_statistic",
    "best_family_changes",
]

MIN_VALUES = 8  # below this a KS statistic and a 3-parameter fit say nothing


@dataclass(frozen=True)
class Family:
    """A distribution family: `fit(z)` takes sorted standardised rows z (k, n) and returns its
    parameters (each (k,); "loc" and "scale" are rescaled to the data, others are shapes) and the
    log-likelihood of z; `cdf(z, params)` is its CDF at z."""
    name: str
    params: tuple[str, ...]
    fit: Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]
    cdf: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]


FAMILIES: Registry[Family] = Registry("distribution family")


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v)[:, None]


def _std_z(z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    return (z - _col(p["loc"])) / _col(p["scale"])


def _register(name: str, params: tuple[str, ...], cdf):
    def wrap(fit):
        FAMILIES.register(name)(Family(name, params, fit, cdf))
        return fit
    return wrap


# --- closed-form families -------------------------------------------------------------------

@_register("normal", ("loc", "scale"), lambda z, p: special.ndtr(_std_z(z, p)))
def _fit_normal(z):
    loc, scale = z.mean(axis=1), z.std(axis=1)
    n = z.shape[1]
    return {"loc": loc, "scale": scale}, -0.5 * n * (np.log(2 * np.pi * scale**2) + 1.0)


@_register("uniform", ("loc", "scale"), lambda z, p: np.clip(_std_z(z, p), 0.0, 1.0))
def _fit_uniform(z):
    lo, hi = z[:, 0], z[:, -1]  # rows are sorted
    return {"loc": lo, "scale": hi - lo}, -z.shape[1] * np.log(hi - lo)


def _laplace_cdf(z, p):
    u = _std_z(z, p)
    e = 0.5 * np.exp(-np.abs(u))
    return np.where(u < 0, e, 1.0 - e)


@_register("laplace", ("loc", "scale"), _laplace_cdf)
def _fit_laplace(z):
    n = z.shape[1]
    med = 0.5 * (z[:, (n - 1) // 2] + z[:, n // 2])
    scale = np.abs(z - med[:, None]).mean(axis=1)
    return {"loc": med, "scale": scale}, -n * (np.log(2 * scale) + 1.0)


# --- logistic: Newton on the two score equations ---------------------------------------------

@_register("logistic", ("loc", "scale"), lambda z, p: special.expit(_std_z(z, p)))
def _fit_logistic(z, iterations: int = 30, tol: float = 1e-10):
    # Score equations of the logistic MLE with u = (z − μ)/s: mean(tanh(u/2)) = 0 and
    # mean(u·tanh(u/2)) = 1. Started from the moments (μ = 0, s = √3/π for unit variance).
    k, n = z.shape
    mu, s = np.zeros(k), np.full(k, np.sqrt(3.0) / np.pi)
    for _ in range(iterations):
        u = (z - mu[:, None]) / s[:, None]
        t = np.tanh(0.5 * u)
        h = 0.5 * (1.0 - t * t)
        uh = u * h
        g1, g2 = t.mean(axis=1), (u * t).mean(axis=1) - 1.0
        j11, j12 = -h.mean(axis=1) / s, -uh.mean(axis=1) / s
        j21, j22 = -(t + uh).mean(axis=1) / s, -(u * t + u * uh).mean(axis=1) / s
        det = j11 * j22 - j12 * j21
        dmu = -(j22 * g1 - j12 * g2) / det
        ds = -(-j21 * g1 + j11 * g2) / det
        # a singular Jacobian (data on a few distinct values) stops that row where it is
        stuck = ~(np.isfinite(dmu) & np.isfinite(ds))
        dmu, ds = np.where(stuck, 0.0, dmu), np.where(stuck, 0.0, ds)
        mu = mu + dmu
        s = np.maximum(s + ds, 0.5 * s)  # never let a step cross zero
        if np.all(np.abs(dmu) + np.abs(ds) < tol):
            break
    u = np.abs((z - mu[:, None]) / s[:, None])
    ll = (-u - 2.0 * np.log1p(np.exp(-u))).sum(axis=1) - n * np.log(s)
    return {"loc": mu, "scale": s}, ll


# --- profile fits over a shape parameter -----------------------------------------------------

def _profile(grid: np.ndarray, loglik_at: Callable[[np.ndarray], np.ndarray], k: int):
    """Maximises loglik over a shape parameter per row: evaluates the log-spaced grid, fits a
    parabola in log(shape) through the best point and its neighbours, evaluates its vertex and
    keeps whichever is best. Returns (shape (k,), loglik (k,))."""
    ll = np.stack([loglik_at(np.full(k, g)) for g in grid], axis=1)  # (k, G)
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    b = ll.argmax(axis=1)
    rows = np.arange(k)
    shape, best = grid[b], ll[rows, b]
    inner = (b > 0) & (b < len(grid) - 1)
    if inner.any():
        x = np.log(grid)
        bi = np.clip(b, 1, len(grid) - 2)
        x0, x1, x2 = x[bi - 1], x[bi], x[bi + 1]
        y0, y1, y2 = ll[rows, bi - 1], ll[rows, bi], ll[rows, bi + 1]
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        bb = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
        with np.errstate(divide="ignore", invalid="ignore"):
            xv = np.where(inner & (a < 0), -bb / (2 * a), x1)
        xv = np.clip(xv, x0, x2)
        cand = np.exp(xv)
        llv = loglik_at(cand)
        better = np.isfinite(llv) & (llv > best)
        shape, best = np.where(better, cand, shape), np.where(better, llv, best)
    return shape, best


_T_GRID = np.geomspace(0.5, 500.0, 12)


def _t_scale(v: np.ndarray, nu: np.ndarray, mad: np.ndarray, newton_steps: int = 4) -> np.ndarray:
    """τ = σ² solving the t MLE scale equation (ν+1)·mean(v / (ντ + v)) = 1 for v = (z − μ)²,
    by Newton in log τ from the MAD estimate; the left side falls monotonically in τ."""
    nu_c = nu[:, None]
    tau = (mad / special.stdtrit(nu, 0.75)) ** 2
    for _ in range(newton_steps):
        q = v / (nu_c * tau[:, None] + v)
        g = (nu + 1.0) * q.mean(axis=1) - 1.0
        dg = -(nu + 1.0) * (q * (1.0 - q)).mean(axis=1)  # d g / d log τ
        step = np.where(dg < 0, -g / np.where(dg < 0, dg, -1.0), 0.0)
        tau = tau * np.exp(np.clip(step, -2.0, 2.0))
    return tau


def _t_cdf(z, p):
    return special.stdtr(_col(p["df"]), _std_z(z, p))


@_register("t", ("df", "loc", "scale"), _t_cdf)
def _fit_t(z):
    k, n = z.shape
    med = 0.5 * (z[:, (n - 1) // 2] + z[:, n // 2])
    v = (z - med[:, None]) ** 2
    mad = np.sqrt(np.median(v, axis=1))
    mad = np.where(mad > 0, mad, np.sqrt(v.mean(axis=1)))

    def loglik(nu):
        tau = _t_scale(v, nu, mad)
        const = special.gammaln(0.5 * (nu + 1)) - special.gammaln(0.5 * nu) - 0.5 * np.log(nu * np.pi * tau)
        return n * const - 0.5 * (nu + 1) * np.log1p(v / (nu * tau)[:, None]).sum(axis=1)

    nu, ll = _profile(_T_GRID, loglik, k)
    return {"df": nu, "loc": med, "scale": np.sqrt(_t_scale(v, nu, mad))}, ll


_GN_GRID = np.geomspace(0.25, 50.0, 24)


def _gennorm_cdf(z, p):
    u = _std_z(z, p)
    beta = _col(p["beta"])
    return 0.5 + 0.5 * np.sign(u) * special.gammainc(1.0 / beta, np.abs(u) ** beta)


@_register("gennorm", ("beta", "loc", "scale"), _gennorm_cdf)
def _fit_gennorm(z):
    # With μ fixed at the mean, the MLE scale for a given β is closed form,
    # σ^β = β·mean|z − μ|^β, and then Σ|z − μ|^β / σ^β = n/β: one exp per value and grid point.
    k, n = z.shape
    mu = z.mean(axis=1)
    with np.errstate(divide="ignore"):
        L = np.log(np.abs(z - mu[:, None]))

    def log_sigma(beta):
        return (np.log(beta) + np.log(np.exp(beta[:, None] * L).mean(axis=1))) / beta

    def loglik(beta):
        return n * (np.log(beta) - np.log(2.0) - log_sigma(beta) - special.gammaln(1.0 / beta) - 1.0 / beta)

    beta, ll = _profile(_GN_GRID, loglik, k)
    return {"beta": beta, "loc": mu, "scale": np.exp(log_sigma(beta))}, ll


# --- the batched driver ----------------------------------------------------------------------

def ks_statistic(cdf_sorted: np.ndarray) -> np.ndarray:
    """Kolmogorov–Smirnov D per row from the fitted CDF evaluated at the sorted sample."""
    n = cdf_sorted.shape[1]
    i = np.arange(1, n + 1)
    return np.maximum((i / n - cdf_sorted).max(axis=1), (cdf_sorted - (i - 1) / n).max(axis=1))


@dataclass
class FitResult:
    """Per snapshot: `status` ('ok' or why it was not fitted), `n` (values fitted), `best`
    (the family with the lowest criterion, or the status where not fitted) and, per family,
    arrays of its parameters plus 'ks', 'loglik', 'aic', 'bic' (NaN where not fitted)."""
    status: np.ndarray
    n: int
    criterion: str
    families: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    best: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))


def _subsample_index(N: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """The fixed subset of entries fitted (the quantiles of `stats.moments` use the same one)."""
    return entry_subset(N, max_samples, seed, minimum=MIN_VALUES)


def fit_snapshots(
    X: np.ndarray,
    families: tuple[str, ...] | None = None,
    max_samples: int | None = 4096,
    criterion: str = "bic",
    seed: int = 0,
) -> FitResult:
    """Fits every family to every snapshot of X (T, m, n). Matrices larger than `max_samples`
    values are fitted on a fixed random subset of entries (None: all). The best family per
    snapshot minimises `criterion` ('aic' or 'bic')."""
    if criterion not in ("aic", "bic"):
        raise UsageError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    fams = [FAMILIES.get(name) for name in (families or FAMILIES.names())]
    X = as_stack(X)
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    sub = _subsample_index(N, max_samples, seed)
    n = N if sub is None else len(sub)
    status = np.full(T, "ok", dtype=object)
    res = {
        f.name: {k: np.full(T, np.nan) for k in (*f.params, "ks", "loglik", "aic", "bic")} for f in fams
    }
    for sl in time_chunks(T, max(n, 1) * 4):
        full = X[sl].reshape(-1, N)
        nonfinite = ~np.isfinite(full).all(axis=1)
        with np.errstate(invalid="ignore"):
            lo, hi = full.min(axis=1), full.max(axis=1)
        st = np.where(nonfinite, "nonfinite", np.where(lo == hi, np.where(lo == 0, "zero", "constant"), "ok"))
        x = (full if sub is None else full[:, sub]).astype(np.float64)
        if n < MIN_VALUES:
            st = np.where(st == "ok", "too_few", st)
        # a subset can be constant while the whole matrix is not: that is not fittable either
        st = np.where((st == "ok") & (x.min(axis=1) == x.max(axis=1)), "constant_subsample", st)
        status[sl] = st
        ok = st == "ok"
        if not ok.any():
            continue
        x = np.sort(x[ok], axis=1)
        # standardise through the range first so that huge values cannot overflow the variance
        mid, half = 0.5 * (x[:, :1] + x[:, -1:]), 0.5 * (x[:, -1:] - x[:, :1])
        y = (x - mid) / half
        m, sd = y.mean(axis=1, keepdims=True), y.std(axis=1, keepdims=True)
        z = (y - m) / sd
        shift, spread = (mid + half * m)[:, 0], (half * sd)[:, 0]
        rows = np.arange(sl.start, sl.stop)[ok]
        for f in fams:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                p, ll = f.fit(z)
                ks = ks_statistic(f.cdf(z, p))
            ll = ll - n * np.log(spread)
            kpar = len(f.params)
            r = res[f.name]
            for name, val in p.items():
                r[name][rows] = shift + spread * val if name == "loc" else spread * val if name == "scale" else val
            r["ks"][rows], r["loglik"][rows] = ks, ll
            r["aic"][rows] = 2 * kpar - 2 * ll
            r["bic"][rows] = kpar * np.log(n) - 2 * ll
    crit = np.stack([res[f.name][criterion] for f in fams], axis=1)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    best = np.array([f.name for f in fams], dtype=object)[crit.argmin(axis=1)]
    best = np.where(status == "ok", best, status)
    return FitResult(status=status, n=n, criterion=criterion, families=res, best=best)


def best_family_changes(steps: np.ndarray, best: np.ndarray) -> list[tuple[int, str, str]]:
    """(step, before, after) for every step at which the best family differs from the one at
    the snapshot before: 'uniform at init → normal at step k' reads off the first entry."""
    steps, best = np.asarray(steps), np.asarray(best, dtype=object)
    if len(steps) != len(best):
        raise UsageError(f"{len(steps)} steps but {len(best)} best-family labels")
    at = np.flatnonzero(best[1:] != best[:-1]) + 1
    return [(int(steps[i]), str(best[i - 1]), str(best[i])) for i in at]
