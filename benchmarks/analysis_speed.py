"""Analysis throughput: lorascope's batched analysis vs a straightforward per-matrix numpy/scipy
loop that computes the same numbers, on a synthetic GPT-2-sized LoRA series (rank 16 on c_attn,
attn.c_proj, c_fc and mlp.c_proj of every block), streamed one module at a time.

    OMP_NUM_THREADS=1 python benchmarks/analysis_speed.py            # quick: 4 blocks, 200 snapshots
    OMP_NUM_THREADS=1 python benchmarks/analysis_speed.py --full     # 12 blocks (48 modules), 2000 snapshots

The batched path (`lorascope.analysis.analyze` with the tables stats, spectra, fits and the health
checks, default Options: 2 threads, fits on 2048 entries at 50 snapshots, quantiles on the same
2048 entries) is timed on every snapshot; `default_s` times what `lorascope analyze` does by
default (stats and health) on the same series. The loop costs ~0.1 s per snapshot for ΔW's SVD
alone and ~0.5 s for scipy's t/gennorm fits, so it is timed on a few evenly spaced snapshots per
module (--loop-snapshots) and its cost is scaled to the whole series (statistics and spectra:
every snapshot; fits: the snapshots the batched path fits); both paths run interleaved module by
module and the loop's numbers are checked against the batched ones on those snapshots. Printed:
seconds, the ratio, and the worst disagreement. `run()` returns the same numbers for
`python -m benchmarks`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as ss  # noqa: E402

from lorascope.analysis import fits as F  # noqa: E402
from lorascope import analysis  # noqa: E402
from lorascope.analysis.selection import evenly  # noqa: E402

GPT2 = {"attn.c_attn": (2304, 768), "attn.c_proj": (768, 768), "mlp.c_fc": (3072, 768), "mlp.c_proj": (768, 3072)}
TABLES = ("stats", "spectra", "fits")
SCIPY_FITS = {"normal": ss.norm, "uniform": ss.uniform, "laplace": ss.laplace, "logistic": ss.logistic,
              "t": ss.t, "gennorm": ss.gennorm}


@dataclass
class Module:
    A: np.ndarray
    B: np.ndarray
    scaling: float
    layer_index: int
    W0: None = None
    attrs: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.A.shape[1]


@dataclass
class Run:
    run_name: str
    steps: np.ndarray
    modules: dict
    # what the reading API gives: the scalars as numpy columns (the DataFrame is built from them)
    scalar_columns: dict = field(default_factory=lambda: {"step": np.zeros(0, np.int64), "loss": np.zeros(0)})

    @property
    def scalars(self) -> pd.DataFrame:
        return pd.DataFrame(self.scalar_columns)


def synthetic(T: int, out_f: int, in_f: int, r: int, rng: np.random.Generator):
    """A from kaiming-uniform drifting, B from zero growing: random walks with decaying steps."""
    decay = (1.0 / np.sqrt(1.0 + np.arange(T, dtype=np.float32)))[:, None, None]
    A = rng.standard_normal((T, r, in_f), dtype=np.float32)
    A *= 2e-3 * decay
    A[0] = rng.uniform(-1, 1, (r, in_f)).astype(np.float32) / np.sqrt(in_f)
    np.cumsum(A, axis=0, out=A)
    B = rng.standard_normal((T, out_f, r), dtype=np.float32)
    B *= 2e-3 * decay
    B[0] = 0.0
    np.cumsum(B, axis=0, out=B)
    return A, B


# --- the straightforward loop: one snapshot, one matrix at a time -------------------------------

def loop_dense(x: np.ndarray, x0: np.ndarray, prev, prev_upd, quantiles, qindex=slice(None)) -> dict:
    v = x.astype(np.float64).ravel()
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    out = {"mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max(),
           "_scale": v.std(), "skew": ss.skew(v), "kurtosis": ss.kurtosis(v), "frobenius": np.linalg.norm(v),
           "spectral_norm": s[0], **spectrum(s),
           "distance_from_first": np.linalg.norm(v - x0.astype(np.float64).ravel())}
    for q in quantiles:
        out[f"q{100 * q:g}"] = np.quantile(v[qindex], q)  # on the entries the batched path samples
    if prev is not None:
        upd = v - prev.astype(np.float64).ravel()
        out["update_size"] = np.linalg.norm(upd)
        if prev_upd is not None:
            out["update_cosine"] = upd @ prev_upd / (np.linalg.norm(upd) * np.linalg.norm(prev_upd))
    return out


def spectrum(s: np.ndarray) -> dict:
    p = s / s.sum()
    e = s**2
    return {"effective_rank": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())),
            "stable_rank": e.sum() / e.max(), "energy_top1": e.max() / e.sum(), "condition_number": s[0] / s[-1]}


def loop_delta_w(A, B, scaling, t, r) -> dict:
    W = scaling * (B[t].astype(np.float64) @ A[t].astype(np.float64))  # the full out×in product
    s = np.linalg.svd(W, compute_uv=False)[:r]
    W0 = scaling * (B[0].astype(np.float64) @ A[0].astype(np.float64))
    Wp = scaling * (B[t - 1].astype(np.float64) @ A[t - 1].astype(np.float64))
    return {"_scale": W.std(), "mean": W.mean(), "frobenius": np.linalg.norm(W), "spectral_norm": s[0], **spectrum(s),
            "distance_from_first": np.linalg.norm(W - W0), "update_size": np.linalg.norm(W - Wp)}


def loop_fits(x: np.ndarray, index) -> dict:
    v = x.astype(np.float64).ravel()[index]
    out = {}
    for name, dist in SCIPY_FITS.items():
        p = dist.fit(v)
        out[name] = {"loglik": dist.logpdf(v, *p).sum(), "ks": ss.kstest(v, dist(*p).cdf).statistic,
                     "loc": p[-2], "scale": p[-1]}
    return out


# --- comparison ------------------------------------------------------------------------------

def compare(fast: dict[str, pd.DataFrame], module: str, t_idx, steps, loop: dict, worst: dict) -> None:
    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    st, sp, fi = fast["stats"], fast["spectra"], fast["fits"]
    for (matrix, t), want in loop["dense"].items():
        row = st[(st.matrix == matrix) & (st.step == steps[t])].iloc[0]
        srow = sp[(sp.matrix == matrix) & (sp.step == steps[t])].iloc[0]
        for k, v in want.items():
            if k.startswith("_") or not np.isfinite(v):
                continue
            got = row[k] if k in row.index else srow[k]
            # a mean near zero is compared on the scale of the values, not relative to itself, and
            # numbers that live near 0 on their own scale (cosines, skew, excess kurtosis) absolutely
            if k == "mean":
                err = abs(got - v) / max(want["_scale"], 1e-30)
            elif k in ("update_cosine", "skew", "kurtosis"):
                err = abs(got - v)
            else:
                err = rel(got, v)
            worst["stats"] = max(worst["stats"], err)
    for (matrix, t), fams in loop["fits"].items():
        rows = fi[(fi.matrix == matrix) & (fi.step == steps[t])].set_index("family")
        for fam, want in fams.items():
            got = rows.loc[fam]
            if fam in ("t", "gennorm"):  # both maximum likelihood: compare the maxima reached
                # (relative: a negative shortfall is lorascope's fit above scipy's)
                worst["fit_shortfall"] = max(worst["fit_shortfall"], (want["loglik"] - got.loglik) / abs(want["loglik"]))
            else:
                worst["fits"] = max(worst["fits"], rel(got.loglik, want["loglik"]), rel(got.ks, want["ks"]),
                                    rel(got["scale"], want["scale"]))


@dataclass
class Result:
    modules: int
    snapshots: int
    batched_s: float      # stats + spectra + fits + health, every module
    default_s: float      # stats + health (what `lorascope analyze` does by default)
    loop_s: float         # the per-matrix loop, extrapolated from timed snapshots
    loop_timed: int       # snapshots the loop actually ran
    worst: dict

    @property
    def ratio(self) -> float:
        return self.loop_s / self.batched_s

    def as_dict(self) -> dict:
        return {"modules": self.modules, "snapshots": self.snapshots, "batched_s": self.batched_s,
                "default_s": self.default_s, "loop_s": self.loop_s, "ratio": self.ratio,
                "loop_timed": self.loop_timed, **{f"worst_{k}": v for k, v in self.worst.items()}}


def run(layers: int = 4, snapshots: int = 200, rank: int = 16, loop_snapshots: int = 3,
        options: analysis.Options | None = None, log=print) -> Result:
    """Times the batched analysis against the per-matrix loop on a synthetic GPT-2-shaped run of
    `layers` blocks (4 modules each) × `snapshots`, one module in memory at a time."""
    options = options or analysis.Options()
    T, r = snapshots, rank
    rng = np.random.default_rng(0)
    steps = np.arange(T, dtype=np.int64)
    fast_s = default_s = loop_s = 0.0
    loop_n = 0
    worst = {"stats": 0.0, "fits": 0.0, "fit_shortfall": -np.inf}
    n_mod = layers * len(GPT2)
    fit_idx = evenly(T, options.fit_steps)
    log(f"{n_mod} modules × {T} snapshots, rank {r}; fits on {options.fit_samples} entries at {len(fit_idx)} "
        f"snapshots, quantiles on {options.quantile_samples} entries, {options.workers} threads; "
        f"loop timed on {loop_snapshots} snapshots per module")
    for layer in range(layers):
        for role, (out_f, in_f) in GPT2.items():
            name = f"transformer.h.{layer}.{role}"
            A, B = synthetic(T, out_f, in_f, r, rng)
            run_ = Run("bench", steps, {name: Module(A, B, 2.0, layer)})
            t0 = time.perf_counter()
            fast = analysis.analyze(run_, TABLES, options, health=True).tables
            fast_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            analysis.analyze(run_, ("stats",), options, health=True)
            default_s += time.perf_counter() - t0

            t_idx = np.unique(np.linspace(2, T - 1, loop_snapshots).round().astype(int))
            f_idx = fit_idx[np.unique(np.linspace(0, len(fit_idx) - 1, loop_snapshots).round().astype(int))]
            sub = {m: F._subsample_index(n, options.fit_samples, 0) for m, n in (("A", r * in_f), ("B", out_f * r))}
            qsub = {m: F._subsample_index(n, options.quantile_samples, 0) for m, n in (("A", r * in_f), ("B", out_f * r))}
            loop = {"dense": {}, "fits": {}}
            t0 = time.perf_counter()
            for t in t_idx:
                for matrix, X in (("A", A), ("B", B)):
                    upd_prev = X[t - 1].astype(np.float64).ravel() - X[t - 2].astype(np.float64).ravel()
                    q = slice(None) if qsub[matrix] is None else qsub[matrix]
                    loop["dense"][(matrix, t)] = loop_dense(X[t], X[0], X[t - 1], upd_prev, options.quantiles, q)
                loop["dense"][("dW", t)] = loop_delta_w(A, B, 2.0, t, r)
            t1 = time.perf_counter()
            for t in f_idx:
                for matrix, X in (("A", A), ("B", B)):
                    idx = sub[matrix]
                    loop["fits"][(matrix, t)] = loop_fits(X[t], slice(None) if idx is None else idx)
            t2 = time.perf_counter()
            # scaled to the whole series: statistics at every snapshot, fits where the batched path fits
            loop_s += (t1 - t0) * T / len(t_idx) + (t2 - t1) * len(fit_idx) / len(f_idx)
            loop_n += len(t_idx) + len(f_idx)
            compare(fast, name, t_idx, steps, loop, worst)
            log(f"  {name:28s} batched {fast_s:8.1f} s (default {default_s:6.1f} s)   loop (est.) {loop_s:9.1f} s")
            del A, B, run_, fast
    return Result(n_mod, T, fast_s, default_s, loop_s, loop_n, worst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="12 blocks (48 modules) × 2000 snapshots")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--snapshots", type=int, default=None)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--loop-snapshots", type=int, default=3, help="snapshots per module timed in the loop")
    ap.add_argument("--fit-samples", type=int, default=analysis.Options.fit_samples)
    ap.add_argument("--fit-steps", type=int, default=analysis.Options.fit_steps)
    ap.add_argument("--quantile-samples", type=int, default=analysis.Options.quantile_samples)
    ap.add_argument("--workers", type=int, default=analysis.Options.workers)
    args = ap.parse_args()
    layers = args.layers or (12 if args.full else 4)
    T = args.snapshots or (2000 if args.full else 200)
    options = analysis.Options(fit_samples=args.fit_samples or None, fit_steps=args.fit_steps or None,
                             quantile_samples=args.quantile_samples or None, workers=args.workers)
    res = run(layers, T, args.rank, args.loop_snapshots, options, log=lambda m: print(m, flush=True))
    print()
    print(f"batched analysis (stats, spectra, fits, health) of {res.modules} modules × {T} snapshots: {res.batched_s:.1f} s")
    print(f"default `lorascope analyze` work (stats, health): {res.default_s:.1f} s")
    print(f"per-matrix loop, estimated from {res.loop_timed} timed snapshots: {res.loop_s:.1f} s")
    print(f"ratio loop / batched: {res.ratio:.1f}x   (target >= 20x)")
    w = res.worst
    print(f"worst relative disagreement: stats/spectra {w['stats']:.2e}, normal/uniform/laplace/logistic "
          f"fits {w['fits']:.2e}; t/gennorm log-likelihood below scipy's fit by at most "
          f"{w['fit_shortfall']:.1e} of it (negative: above it everywhere)")


if __name__ == "__main__":
    main()
