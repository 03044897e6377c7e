"""How close lorascope's distribution fits come to scipy.stats' own maximum-likelihood `fit` on a
real recording: the snapshots `lorascope analyze` fits (50 evenly spaced, the same 2048 sampled
entries), a few per matrix plus the first three (B right after the first Adam step is two tight
clusters). Printed per shape family (t, gennorm): the log-likelihood shortfall against scipy's fit
(median and worst, in nats and relative; negative where lorascope's maximum is higher), how often
the best family would change if scipy's fit stood for the family where it is better, the fits'
time per snapshot, and the fit methods (with the method column).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/fit_accuracy.py recordings/default.h5 [per-matrix]

scipy's `t.fit`/`gennorm.fit` take ~0.3 s each: the default 6 snapshots per matrix of the embedded
default's 14 modules run for ~3 minutes."""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from scipy import stats as ss

import lorascope
from lorascope.analysis import fits as F
from lorascope.analysis.batch import entry_subset

SCIPY = {"t": ss.t, "gennorm": ss.gennorm}


def main(path: str, per_matrix: int = 6) -> None:
    rec = lorascope.open(path)
    T = len(rec.steps)
    idx = np.unique(np.linspace(0, T - 1, min(T, 50)).round().astype(int))
    pick = set(np.r_[idx[:3], idx[np.linspace(0, len(idx) - 1, per_matrix).round().astype(int)]].tolist())
    rows, changed, seconds, methods = [], 0, 0.0, {}
    for name, m in rec.modules.items():
        for matrix in ("A", "B"):
            X = np.asarray(getattr(m, matrix)[:])[idx]
            t0 = time.perf_counter()
            r = F.fit_snapshots(X, max_samples=2048)
            seconds += time.perf_counter() - t0
            for fam, v in r.families.items():
                for meth in v.get("method", np.array([])):
                    methods.setdefault(fam, {}).setdefault(str(meth), 0)
                    methods[fam][str(meth)] += 1
            sub = entry_subset(X.shape[1] * X.shape[2], 2048, 0, minimum=F.MIN_VALUES)
            for j, t in enumerate(idx):
                if t not in pick or r.status[j] != "ok":
                    continue
                x = X[j].reshape(-1)
                x = (x if sub is None else x[sub]).astype(np.float64)
                bic = {f: (v["bic"][j] if v.get("method", np.array(["mle"] * len(idx)))[j] == "mle" else np.inf)
                       for f, v in r.families.items()}
                for fam, dist in SCIPY.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ref = float(dist.logpdf(x, *dist.fit(x)).sum())
                    rows.append((name, matrix, int(rec.steps[t]), fam, r.families[fam]["loglik"][j], ref))
                    bic[fam] = min(bic[fam], 3 * np.log(len(x)) - 2 * ref)  # the better fit stands for it
                changed += min(bic, key=bic.get) != r.best[j]
    n_snap = len(rows) // len(SCIPY)
    print(f"{path}: {n_snap} snapshots compared with scipy; lorascope's fits of all {len(rec.modules)} modules "
          f"took {seconds:.1f} s ({1e3 * seconds / (len(rec.modules) * 2 * len(idx)):.1f} ms per snapshot)")
    for fam in SCIPY:
        sel = [row for row in rows if row[3] == fam]
        short = np.array([ref - ours for *_, ours, ref in sel])
        rel = short / np.abs([ref for *_, ref in sel])
        w = int(np.argmax(short))
        print(f"  {fam}: shortfall against scipy's fit: median {np.median(short):.3g} nats, worst {short[w]:.3g} nats "
              f"({rel[w]:.1e} relative) at {sel[w][0]} {sel[w][1]} step {sel[w][2]}; above scipy's in "
              f"{(short < 0).sum()} of {len(short)}")
    print(f"  best family changes with scipy's t/gennorm fit where that is better: {changed} of {n_snap}")
    if methods:
        print("  methods:", {f: c for f, c in methods.items()})


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
