"""``python -m benchmarks``: the quick version of every benchmark (a few minutes on GPT-2 small) and
one summary table; ``--full`` for the long version (both models, the analysis of 48 modules × 2000
snapshots); ``--only`` to choose; ``--markdown FILE`` to write the tables with the machine they
ran on (what benchmarks/README.md records).

    OMP_NUM_THREADS=1 python -m benchmarks
    OMP_NUM_THREADS=1 python -m benchmarks --full --markdown /tmp/bench.md
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.suite import SCALES, SUITE, render, run_suite, summary_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the long version")
    ap.add_argument("--scale", choices=list(SCALES), default=None, help="overrides --full (smoke = tiny)")
    ap.add_argument("--only", nargs="+", choices=SUITE.names(), default=None)
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args(argv)
    scale_name = args.scale or ("full" if args.full else "quick")
    outcomes = run_suite(SCALES[scale_name], args.only, log=lambda line: print(line, flush=True))
    for outcome in outcomes:
        print(f"\n### {outcome.name} ({outcome.seconds:.0f} s)\n{outcome.detail}")
    print("\n" + summary_table(outcomes))
    if args.markdown:
        command = "OMP_NUM_THREADS=1 python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.markdown, "w") as f:
            f.write(render(outcomes, command.strip()) + "\n")
        print(f"\nwrote {args.markdown}")
    failed = [row for o in outcomes for row in o.summary if row["result"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
