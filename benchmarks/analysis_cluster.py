"""`lorascope analyze`'s default work (stats + health) on the 4 × 2,000 benchmark recording
(`analysis_h5.write_recording`: GPT-2 shapes, rank 16, one block), in this process against a
Dask `distributed.LocalCluster` of N single-threaded worker processes (`scheduler=`), with the
same `Options`; the tables of every cluster run are checked equal to the in-process ones.

    OMP_NUM_THREADS=1 python -m benchmarks.analysis_cluster --workers 2 --repeat 2

Runs are interleaved (here, cluster, here, cluster ...) so that a load that comes and goes on a
shared machine falls on both. The cluster is started once, before the first run: its start-up
is printed apart, and each cluster run includes connecting a client and the tasks' transfers.
Needs pip install 'lorascope[dask]'."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.analysis_h5 import write_recording  # noqa: E402

__all__ = ["main"]


def _timed(path: Path, scheduler: str | None) -> tuple[float, dict]:
    import lorascope
    from lorascope.analysis import Options, analyze

    with lorascope.open(path) as rec:
        t0 = time.perf_counter()
        result = analyze(rec, ("stats",), Options(), health=True, scheduler=scheduler)
        return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1, help="GPT-2 blocks, 4 modules each")
    ap.add_argument("--snapshots", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    import pandas as pd
    from distributed import LocalCluster

    path = Path(f"/tmp/lorascope_bench_{args.layers}x{args.snapshots}.h5")
    write_recording(path, args.layers, args.snapshots)
    print(f"recording {path}: {4 * args.layers} modules x {args.snapshots} snapshots, "
          f"{path.stat().st_size / 2**30:.2f} GiB", flush=True)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        print(f"LocalCluster({args.workers}) started in {time.perf_counter() - t0:.1f} s", flush=True)
        rows, reference = [], None
        for _ in range(args.repeat):
            for where, scheduler in (("in-process", None), (f"LocalCluster({args.workers})", cluster.scheduler_address)):
                wall, result = _timed(path, scheduler)
                if reference is None:
                    reference = result
                for name, table in reference.tables.items():  # the same tables, bit for bit
                    pd.testing.assert_frame_equal(table, result.tables[name], check_exact=True)
                rows.append({"where": where, "wall_s": wall})
                print(f"  {where:16s} {wall:6.1f} s", flush=True)
    frame = pd.DataFrame(rows).groupby("where", sort=False)["wall_s"].median()
    print("median wall seconds:", frame.round(1).to_dict(), "ratio cluster / in-process:",
          round(frame.iloc[1] / frame.iloc[0], 2))
    return rows


if __name__ == "__main__":
    main()
