"""The many-repetition versions of the reliability tests, and the numbers of docs/reliability.md.

    OMP_NUM_THREADS=1 python -m benchmarks.kill_stress                    # 20 of each, forked
    OMP_NUM_THREADS=1 python -m benchmarks.kill_stress --launcher exec    # as `python cli.py` (slow)
    OMP_NUM_THREADS=1 python -m benchmarks.kill_stress --only kill-cli signals --tries 5

Experiments (each prints one row of the table):
- ``kill-worker``: SIGKILL at a random moment (0-0.6 s) of a recording process whose weights are
  known exactly (tests/record_worker.py); every stored snapshot is checked bit for bit, and
  "lost" counts steps the process had finished but the file does not hold (the flush interval).
- ``kill-cli``: SIGKILL at a random moment (0-3 s after the model loaded) of `lorascope record`;
  the file must open, hold snapshots 0..k with every row readable and finite, and `lorascope info`
  must say it was interrupted.
- ``signals``: SIGINT or SIGTERM (alternating) after the first progress line, then `--resume`;
  the file must hold every step up to the stop (lost = steps finished but absent), then every
  planned step exactly once.
- ``bad-inputs``: every case of tests/test_reliability_cli_inputs.py; counts `error:` lines,
  framework usage errors, and tracebacks.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import lorascope  # noqa: E402
from tests.cli_process import QUICK_RECORD, run_cli, start_cli, warm_up  # noqa: E402

__all__ = ["Row", "EXPERIMENTS", "main"]


@dataclass
class Row:
    experiment: str
    tries: int = 0
    survived: int = 0  # the file opened and every check held
    lost: list[int] = field(default_factory=list)  # per try: snapshots finished but not in the file
    tracebacks: int = 0
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        lost = f"{sum(self.lost)} (max {max(self.lost)} per try)" if self.lost else "-"
        return [self.experiment, f"{self.survived}/{self.tries}", lost, str(self.tracebacks), "; ".join(self.notes)]


def _contiguous(path: Path) -> int:
    """Opens a recording, checks that snapshots run 0..k with every row readable and finite and
    the scalars 1..n; returns the number of snapshots."""
    with lorascope.open(path) as rec:
        steps = rec.steps.tolist()
        if steps != list(range(len(steps))):
            raise AssertionError(f"snapshot steps are not 0..k: {steps[:10]}")
        for m in rec.modules.values():
            if len(steps) and not (np.isfinite(m.A[:]).all() and np.isfinite(m.B[:]).all()):
                raise AssertionError(f"{m} holds a non-finite snapshot")
        scalar_steps = rec.scalars["step"].tolist()
        if scalar_steps != list(range(1, len(scalar_steps) + 1)):
            raise AssertionError("scalar steps are not 1..n")
        return len(steps)


# --- experiments -----------------------------------------------------------------------------

def kill_worker(tries: int, folder: Path, launcher: str, rng: random.Random) -> Row:
    from tests.record_worker import expected, run

    fork = multiprocessing.get_context("fork")
    row = Row("SIGKILL, recording process (bit-exact check)")
    for i in range(tries):
        path = folder / f"worker{i}.h5"
        ready, last = fork.Event(), fork.Value("q", 0)
        proc = fork.Process(target=run, args=(str(path), 1, 1_000_000, ready, last))
        proc.start()
        ready.wait(60)
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        row.tries += 1
        try:
            n = _contiguous(path)
            with lorascope.open(path) as rec:
                for m in rec.modules.values():
                    for t in range(n):
                        eA, eB = expected(t)
                        np.testing.assert_array_equal(m.A[t], eA.numpy())
                        np.testing.assert_array_equal(m.B[t], eB.numpy())
                assert rec.status == "interrupted"
            row.lost.append(max(0, last.value + 1 - n))  # snapshots 0..last were taken
            row.survived += 1
        except Exception as exc:  # a finding, not a crash of the script
            row.notes.append(f"try {i}: {exc}")
    row.notes.append("flush every step; lost = snapshots taken but not yet committed at the kill")
    return row


def kill_cli(tries: int, folder: Path, launcher: str, rng: random.Random) -> Row:
    row = Row(f"SIGKILL, `lorascope record` ({launcher})")
    held: list[int] = []
    for i in range(tries):
        path = folder / f"cli{i}.h5"
        row.tries += 1
        try:
            proc = start_cli(["record", "-o", path, *QUICK_RECORD, "--steps", "400",
                              "--set", "record.flush_every_steps=1"], folder, launcher)
            proc.wait_for("recording 8 modules")
            time.sleep(rng.uniform(0.0, 3.0))
            proc.signal(signal.SIGKILL)
            proc.wait()
            if not path.exists():
                raise AssertionError("no file")  # killed before the file was created: counted as a failure
            n = _contiguous(path)
            info = run_cli(["info", path, "--no-health"], folder, launcher)
            row.tracebacks += "Traceback" in info.output
            assert info.code == 0 and "status     interrupted" in info.stdout, info.output
            row.survived += 1
            held.append(n)
        except Exception as exc:
            row.notes.append(f"try {i}: {exc}")
    if held:
        row.notes.append(f"files held {min(held)} to {max(held)} snapshots; flush every step")
    return row


def signals(tries: int, folder: Path, launcher: str, rng: random.Random) -> Row:
    steps = 60
    row = Row(f"SIGINT/SIGTERM, `lorascope record` then --resume ({launcher})")
    for i in range(tries):
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        path = folder / f"sig{i}.h5"
        args = ["record", "-o", path, *QUICK_RECORD, "--steps", str(steps),
                "--set", "record.flush_every_steps=100000", "--set", "record.flush_every_seconds=3600"]
        row.tries += 1
        try:
            proc = start_cli(args, folder, launcher)
            proc.wait_for(f"step {steps // 10}/{steps}")
            time.sleep(rng.uniform(0.0, 1.0))
            proc.signal(signum)
            done = proc.wait()
            row.tracebacks += "Traceback" in done.output
            assert done.code == 128 + signum, f"exit code {done.code}"
            stopped = int(re.search(r"interrupted at step (\d+)", done.stdout).group(1))
            n = _contiguous(path)
            row.lost.append(stopped + 1 - n)
            resumed = run_cli([*args, "--resume"], folder, launcher)
            row.tracebacks += "Traceback" in resumed.output
            assert resumed.code == 0, resumed.output[-500:]
            assert _contiguous(path) == steps + 1
            with lorascope.open(path) as rec:
                assert rec.status == "complete"
            row.survived += 1
        except Exception as exc:
            row.notes.append(f"try {i}: {str(exc).splitlines()[0]}")
    return row


def bad_inputs(tries: int, folder: Path, launcher: str, rng: random.Random) -> Row:
    from tests.test_reliability_cli_inputs import CASES, judge, make_inputs

    files = make_inputs(folder / "inputs")
    row = Row(f"bad inputs over 5 commands ({launcher})")
    outcomes: dict[str, int] = {}
    try:
        for case in CASES:
            if case.root_cannot and os.geteuid() == 0:
                outcomes["skipped (root reads any file)"] = outcomes.get("skipped (root reads any file)", 0) + 1
                continue
            done = run_cli([case.command, *case.args(files)], files["dir"], launcher)
            verdict = judge(case, done)
            row.tries += 1
            row.tracebacks += "Traceback" in done.output
            if verdict in ("error", "usage"):
                row.survived += 1
                key = "one `error:` line" if verdict == "error" else "framework usage error"
            else:
                key = "wrong"
                row.notes.append(f"{case.command}: {case.bad}: {verdict.splitlines()[0]}")
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        files["unreadable"].chmod(0o644)
    row.notes[:0] = [", ".join(f"{k} {v}" for k, v in outcomes.items())]
    return row


EXPERIMENTS: dict[str, Callable[[int, Path, str, random.Random], Row]] = {
    "kill-worker": kill_worker,
    "kill-cli": kill_cli,
    "signals": signals,
    "bad-inputs": bad_inputs,
}


def table(rows: list[Row]) -> str:
    head = ["experiment", "survived / tries", "snapshots lost", "tracebacks", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kill_stress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=20, help="repetitions of each kill/signal experiment")
    ap.add_argument("--launcher", choices=["fork", "exec"], default="fork",
                    help="fork this interpreter (fast) or run `python cli.py` (what a user types)")
    ap.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lorascope-stress-") as tmp:
        folder = Path(tmp)
        if args.launcher == "fork":
            warm_up(folder)
        for name in args.only:
            started = time.perf_counter()
            (folder / name).mkdir()
            row = EXPERIMENTS[name](args.tries, folder / name, args.launcher, rng)
            print(f"{name}: {row.survived}/{row.tries} in {time.perf_counter() - started:.0f} s", flush=True)
            rows.append(row)
    print()
    print(table(rows))
    return 0 if all(r.survived == r.tries and r.tracebacks == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
