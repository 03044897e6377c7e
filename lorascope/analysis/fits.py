"""Distribution fits per snapshot, batched over the time axis: normal, uniform, Laplace,
logistic, Student-t and the generalised normal (whose shape β moves from Laplace (1) through
normal (2) towards uniform (→∞), one number for the 'uniform at init → Gaussian' story).

Every family is fitted by maximum likelihood, jointly in all its parameters, on the
standardised values z = (x − mean)/std (so that huge or tiny weights cannot overflow): in
closed form for the normal, uniform and Laplace, by Newton's method for the logistic, and for
Student-t (free location, scale and df) and the generalised normal (free location, scale and β)
as `mle_t` and `mle_gennorm` describe, including their limits df = ∞ (the normal) and β = ∞ (the uniform) where the
likelihood rises all the way. Every snapshot is fitted from the data's own moments and then
again from the previous snapshot's optimum wherever that is a better start. Each fit says how
it ended (`method`): 'mle' (a maximum of the likelihood, or its limit), 'bounded' (stopped at
the edge of the parameter range the likelihood is maximised over, see `mle_t`, `mle_gennorm`), or
'not_converged'; only 'mle' fits are ranked for the best family. Matrices that are all zeros,
constant, non-finite or too small are named, not fitted."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

from lorascope.analysis import mle as _mle
from lorascope.analysis import mle_gennorm as _gennorm
from lorascope.analysis import mle_t as _t
from lorascope.analysis.batch import as_stack, entry_subset, time_chunks
from lorascope.errors import UsageError
from lorascope.registry import Registry

__all__ = [
    "Family",
    "FAMILIES",
    "FitResult",
    "MIN_VALUES",
    "METHODS",
    "fit_snapshots",
    "ks_statistic",
    "best_family_changes",
]

MIN_VALUES = 8  # below this a KS statistic and a 3-parameter fit say nothing
METHODS = ("mle", "bounded", "not_converged")


@dataclass(frozen=True)
class Family:
    """A distribution family: `fit(z, start)` takes sorted standardised rows z (k, n) and an
    optional start (the previous snapshot's parameters in z's units, or None) and returns its
    parameters (each (k,); "loc" and "scale" are rescaled to the data, others are shapes), the
    log-likelihood of z and each row's `method`; `cdf(z, params)` is its CDF at z; `loglik(z,
    params)`, for the families whose likelihood can have several maxima, lets the driver try the
    previous snapshot's optimum as a start."""
    name: str
    params: tuple[str, ...]
    fit: Callable[[np.ndarray, dict | None], tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]
    cdf: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]
    loglik: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None


FAMILIES: Registry[Family] = Registry("distribution family")


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v)[:, None]


def _std_z(z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    return (z - _col(p["loc"])) / _col(p["scale"])


def _method(converged: np.ndarray, bounded: np.ndarray | None = None) -> np.ndarray:
    m = np.where(converged, "mle", "not_converged").astype(object)
    if bounded is not None:
        m[bounded] = "bounded"
    return m


def _register(name: str, params: tuple[str, ...], cdf, loglik=None):
    def wrap(fit):
        FAMILIES.register(name)(Family(name, params, fit, cdf, loglik))
        return fit
    return wrap


# --- closed-form families -------------------------------------------------------------------

@_register("normal", ("loc", "scale"), lambda z, p: special.ndtr(_std_z(z, p)))
def _fit_normal(z, start=None):
    loc, scale = z.mean(axis=1), z.std(axis=1)
    return {"loc": loc, "scale": scale}, _mle.normal_loglik(z), _method(np.ones(len(z), dtype=bool))


@_register("uniform", ("loc", "scale"), lambda z, p: np.clip(_std_z(z, p), 0.0, 1.0))
def _fit_uniform(z, start=None):
    lo, hi = z[:, 0], z[:, -1]  # rows are sorted
    return {"loc": lo, "scale": hi - lo}, -z.shape[1] * np.log(hi - lo), _method(np.ones(len(z), dtype=bool))


def _laplace_cdf(z, p):
    u = _std_z(z, p)
    e = 0.5 * np.exp(-np.abs(u))
    return np.where(u < 0, e, 1.0 - e)


@_register("laplace", ("loc", "scale"), _laplace_cdf)
def _fit_laplace(z, start=None):
    # the median and the mean absolute deviation from it; for even n every point between the two
    # middle values is a median with the same likelihood
    n = z.shape[1]
    med = 0.5 * (z[:, (n - 1) // 2] + z[:, n // 2])
    scale = np.abs(z - med[:, None]).mean(axis=1)
    return {"loc": med, "scale": scale}, -n * (np.log(2 * scale) + 1.0), _method(np.ones(len(z), dtype=bool))


# --- logistic: Newton on the two score equations ---------------------------------------------

@_register("logistic", ("loc", "scale"), lambda z, p: special.expit(_std_z(z, p)))
def _fit_logistic(z, start=None, iterations: int = 100, tol: float = 1e-12):
    # Score equations of the logistic MLE with u = (z − μ)/s: mean(tanh(u/2)) = 0 and
    # mean(u·tanh(u/2)) = 1 (the log-likelihood is concave in μ and has one stationary point).
    # Started from the moments (μ = 0, s = √3/π for unit variance).
    k, n = z.shape
    mu, s = np.zeros(k), np.full(k, np.sqrt(3.0) / np.pi)
    done = np.zeros(k, dtype=bool)
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
        dmu, ds = np.where(stuck | done, 0.0, dmu), np.where(stuck | done, 0.0, ds)
        mu = mu + dmu
        s = np.maximum(s + ds, 0.5 * s)  # never let a step cross zero
        done |= (np.abs(dmu) + np.abs(ds) < tol * (1 + np.abs(mu) + s)) & ~stuck
        if done.all():
            break
    u = np.abs((z - mu[:, None]) / s[:, None])
    ll = (-u - 2.0 * np.log1p(np.exp(-u))).sum(axis=1) - n * np.log(s)
    return {"loc": mu, "scale": s}, ll, _method(done)


# --- the shape families: see `mle` -----------------------------------------------------------

def _t_cdf(z, p):
    return special.stdtr(_col(p["df"]), _std_z(z, p))  # df = ∞ is the normal's


@_register("t", ("df", "loc", "scale"), _t_cdf,
           loglik=lambda z, p: _t.t_loglik(z, p["loc"], p["scale"], p["df"]))
def _fit_t(z, start=None):
    p, ll, converged, bounded = _t.fit_t(z, start)
    return p, ll, _method(converged, bounded)


def _gennorm_cdf(z, p):
    u = _std_z(z, p)
    beta = _col(p["beta"])
    b = np.where(np.isfinite(beta), beta, 1.0)
    finite = 0.5 + 0.5 * np.sign(u) * special.gammainc(1.0 / b, np.abs(u) ** b)
    return np.where(np.isfinite(beta), finite, np.clip(0.5 * (u + 1.0), 0.0, 1.0))  # β = ∞: uniform


@_register("gennorm", ("beta", "loc", "scale"), _gennorm_cdf,
           loglik=lambda z, p: _gennorm.gennorm_loglik(z, p["loc"], p["scale"], p["beta"]))
def _fit_gennorm(z, start=None):
    p, ll, converged, bounded = _gennorm.fit_gennorm(z, start)
    return p, ll, _method(converged, bounded)


# --- the batched driver ----------------------------------------------------------------------

def ks_statistic(cdf_sorted: np.ndarray) -> np.ndarray:
    """Kolmogorov–Smirnov D per row from the fitted CDF evaluated at the sorted sample."""
    n = cdf_sorted.shape[1]
    i = np.arange(1, n + 1)
    return np.maximum((i / n - cdf_sorted).max(axis=1), (cdf_sorted - (i - 1) / n).max(axis=1))


@dataclass
class FitResult:
    """Per snapshot: `status` ('ok' or why it was not fitted), `n` (values fitted), `best`
    (the family with the lowest criterion among the exact fits, method 'mle', or the status
    where not fitted) and, per family, arrays of its parameters plus 'ks', 'loglik', 'aic',
    'bic' (NaN where not fitted) and 'method' (see the module; None where not fitted)."""
    status: np.ndarray
    n: int
    criterion: str
    families: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    best: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))


def _subsample_index(N: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """The fixed subset of entries fitted (the quantiles of `stats.moments` use the same one)."""
    return entry_subset(N, max_samples, seed, minimum=MIN_VALUES)


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted rows z = (x − shift)/spread with mean 0 and std 1, and (shift, spread) per row.
    Standardised through the range first, so that huge values cannot overflow the variance."""
    x = np.sort(x, axis=1)
    mid, half = 0.5 * (x[:, :1] + x[:, -1:]), 0.5 * (x[:, -1:] - x[:, :1])
    y = (x - mid) / half
    m, sd = y.mean(axis=1, keepdims=True), y.std(axis=1, keepdims=True)
    return (y - m) / sd, (mid + half * m)[:, 0], (half * sd)[:, 0]


def _to_data(p: dict[str, np.ndarray], shift: np.ndarray, spread: np.ndarray) -> dict[str, np.ndarray]:
    return {k: shift + spread * v if k == "loc" else spread * v if k == "scale" else v for k, v in p.items()}


def _snap_loc(loc: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A location that the fit put on a data value (the generalised normal with β < 1 does, by
    its nature) comes back from z's units a few ulps away from it; for β ≪ 1 even 1e-16 off
    the peak costs ~1e-4 nats. Locations within rounding of a data value (sorted rows xs) are
    set to it exactly; elsewhere a few ulps change nothing."""
    i = np.clip((xs < loc[:, None]).sum(axis=1), 1, xs.shape[1] - 1)  # searchsorted, row by row
    rows = np.arange(len(xs))
    near = np.where(np.abs(xs[rows, i] - loc) < np.abs(xs[rows, i - 1] - loc), xs[rows, i], xs[rows, i - 1])
    tol = 16 * np.finfo(np.float64).eps * np.abs(xs).max(axis=1)
    return np.where(np.abs(near - loc) <= tol, near, loc)


def _to_z(p: dict[str, np.ndarray], shift: np.ndarray, spread: np.ndarray) -> dict[str, np.ndarray]:
    return {k: (v - shift) / spread if k == "loc" else v / spread if k == "scale" else v for k, v in p.items()}


def _warm(f: Family, z: np.ndarray, p: dict, ll: np.ndarray, method: np.ndarray, prev: dict | None,
          shift: np.ndarray, spread: np.ndarray, rounds: int = 3):
    """Re-fits the rows for which the previous snapshot's optimum (row i − 1's; row 0's from
    `prev`, the chunk before, in data units) is more likely than their own: started there, the
    fit can only end at least as high. Repeated while a row improves, so that a better optimum
    can travel along the series. Returns the updated (p, ll, method)."""
    for _ in range(rounds):
        data = _to_data(p, shift, spread)
        before = {k: np.concatenate([[np.nan] if prev is None else prev[k], v[:-1]]) for k, v in data.items()}
        start = _to_z(before, shift, spread)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            there = f.loglik(z, start)
        rows = np.flatnonzero(np.isfinite(there) & (there > ll + 1e-9 * np.abs(ll)))
        if not len(rows):
            break
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            p2, ll2, m2 = f.fit(z[rows], {k: v[rows] for k, v in start.items()})
        better = ll2 > ll[rows]
        if not better.any():
            break
        take = rows[better]
        for k in p:
            p[k][take] = p2[k][better]
        ll[take], method[take] = ll2[better], m2[better]
    return p, ll, method


def fit_snapshots(
    X: np.ndarray,
    families: tuple[str, ...] | None = None,
    max_samples: int | None = 4096,
    criterion: str = "bic",
    seed: int = 0,
) -> FitResult:
    """Fits every family to every snapshot of X (T, m, n) by maximum likelihood. Matrices larger
    than `max_samples` values are fitted on a fixed random subset of entries (None: all). The
    best family per snapshot minimises `criterion` ('aic' or 'bic') among the exact fits."""
    if criterion not in ("aic", "bic"):
        raise UsageError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    fams = [FAMILIES.get(name) for name in (families or FAMILIES.names())]
    X = as_stack(X)
    T, N = X.shape[0], X.shape[1] * X.shape[2]
    sub = _subsample_index(N, max_samples, seed)
    n = N if sub is None else len(sub)
    status = np.full(T, "ok", dtype=object)
    res = {f.name: {**{k: np.full(T, np.nan) for k in (*f.params, "ks", "loglik", "aic", "bic")},
                    "method": np.full(T, None, dtype=object)} for f in fams}
    last: dict[str, dict | None] = {f.name: None for f in fams}  # the previous chunk's last optimum
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
        xs = np.sort(x[ok], axis=1)
        z, shift, spread = _standardised(xs)
        rows = np.arange(sl.start, sl.stop)[ok]
        for f in fams:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                p, ll, method = f.fit(z)
                if f.loglik is not None:
                    p, ll, method = _warm(f, z, p, ll, method, last[f.name], shift, spread)
                ks = ks_statistic(f.cdf(z, p))
            last[f.name] = {k: v[-1:] for k, v in _to_data(p, shift, spread).items()}
            ll = ll - n * np.log(spread)
            kpar = len(f.params)
            r = res[f.name]
            data = _to_data(p, shift, spread)
            data["loc"] = _snap_loc(data["loc"], xs)
            for name, val in data.items():
                r[name][rows] = val
            r["ks"][rows], r["loglik"][rows], r["method"][rows] = ks, ll, method
            r["aic"][rows] = 2 * kpar - 2 * ll
            r["bic"][rows] = kpar * np.log(n) - 2 * ll
    crit = np.stack([np.where(res[f.name]["method"] == "mle", res[f.name][criterion], np.nan) for f in fams], axis=1)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    best = np.array([f.name for f in fams], dtype=object)[crit.argmin(axis=1)]
    best = np.where(status == "ok", np.where(np.isfinite(crit).any(axis=1), best, "not_fitted"), status)
    return FitResult(status=status, n=n, criterion=criterion, families=res, best=best)


def best_family_changes(steps: np.ndarray, best: np.ndarray) -> list[tuple[int, str, str]]:
    """(step, before, after) for every step at which the best family differs from the one at
    the snapshot before: 'uniform at init → normal at step k' reads off the first entry."""
    steps, best = np.asarray(steps), np.asarray(best, dtype=object)
    if len(steps) != len(best):
        raise UsageError(f"{len(steps)} steps but {len(best)} best-family labels")
    at = np.flatnonzero(best[1:] != best[:-1]) + 1
    return [(int(steps[i]), str(best[i - 1]), str(best[i])) for i in at]
