"""The cost of analysis tables on a synthetic GPT-2-shaped LoRA series with a pretrained W0, and the
same tables timed on a second checkout in the same rounds (before a change and after it).

    OMP_NUM_THREADS=1 python benchmarks/analysis_tables_ab.py --baseline /work/main --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/analysis_tables_ab.py --tables intruders,magnitude_direction,amplification,asymmetry

Each round runs every checkout in a fresh process, one after the other (A B A B ...), so a burst
of load from a neighbour hits both alike; each process builds the same series (`analysis_speed.
synthetic`, W0 ~ N(0, 1/in)) and times `lorascope.analysis.analyze(run, tables, health=...)`
module by module, wall and CPU seconds. Printed: the medians per checkout and their ratio."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# runs inside the checkout being timed (its lorascope first on sys.path)
_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(1, {bench!r})
from lorascope import analysis
from analysis_speed import GPT2, Module, synthetic

class Run:  # the reading API's attributes analyze reads
    def __init__(self, name, steps, modules):
        self.run_name, self.steps, self.modules = name, steps, modules
        self.scalar_columns = {{"step": steps[1:], "loss": np.linspace(3.0, 2.0, len(steps) - 1)}}

rng = np.random.default_rng(0)
wall = cpu = 0.0
for layer in range({layers}):
    for role, (out_f, in_f) in GPT2.items():
        A, B = synthetic({snapshots}, out_f, in_f, {rank}, rng)
        W0 = (rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)).astype(np.float32)
        run = Run("bench", np.arange({snapshots}, dtype=np.int64),
                  {{f"transformer.h.{{layer}}.{{role}}": Module(A, B, 2.0, layer, W0)}})
        w, c = time.perf_counter(), time.process_time()
        analysis.analyze(run, {tables!r}, health={health!r})
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
print(json.dumps({{"wall": wall, "cpu": cpu}}))
"""


def time_tree(root: Path, tables: tuple[str, ...], health: bool, layers: int, snapshots: int, rank: int) -> dict:
    code = _CHILD.format(root=str(root), bench=str(HERE), layers=layers, snapshots=snapshots, rank=rank,
                         tables=tables, health=health)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None, help="a second checkout, timed in the same rounds")
    ap.add_argument("--tables", default="stats", help="comma-separated tables (default: what `lorascope analyze` does)")
    ap.add_argument("--no-health", action="store_true", help="leave the health checks out")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=1, help="blocks of 4 GPT-2 modules")
    ap.add_argument("--snapshots", type=int, default=2000)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    tables = tuple(t for t in args.tables.split(",") if t)
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    got: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for label, root in trees.items():
            got[label].append(time_tree(root, tables, not args.no_health, args.layers, args.snapshots, args.rank))
            print(f"round {i + 1} {label:8s} wall {got[label][-1]['wall']:7.2f} s  cpu {got[label][-1]['cpu']:7.2f} s")
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu")} for k, v in got.items()}
    print(f"\n{4 * args.layers} modules × {args.snapshots} snapshots, rank {args.rank}, tables {','.join(tables)}"
          f"{'' if args.no_health else ' + health'}, median of {args.rounds}")
    for k, m in med.items():
        print(f"  {k:8s} wall {m['wall']:7.2f} s  cpu {m['cpu']:7.2f} s")
    if "baseline" in med:
        print(f"  this / baseline: wall {med['this']['wall'] / med['baseline']['wall']:.3f}, "
              f"cpu {med['this']['cpu'] / med['baseline']['cpu']:.3f}")


if __name__ == "__main__":
    main()
