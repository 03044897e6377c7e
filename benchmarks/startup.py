"""How long the command line takes to answer: `lorascope --help`, each `lorascope CMD --help` and
`lorascope info FILE` on a small recording, each in a fresh interpreter exactly as the `lorascope`
script starts (`from lorascope.cli import main; main()`), beside two floors: a bare interpreter
and one that imports typer. Compiled modules are cached, as after an install
(``--no-bytecode-cache`` keeps this environment's PYTHONDONTWRITEBYTECODE=1). The cases run
interleaved, several rounds, and the table reports medians in seconds: wall time, and the
child's CPU time (user + system), which a busy shared machine inflates far less than wall time.

``--root`` measures another checkout (its lorascope first on PYTHONPATH); ``--baseline`` times a
second checkout in the same rounds, interleaved, so that a tree before a change and after it
meet the same load on a shared machine:

    OMP_NUM_THREADS=1 python benchmarks/startup.py --repeats 9
    git archive <commit> | tar -x -C /tmp/before
    OMP_NUM_THREADS=1 python benchmarks/startup.py --baseline /tmp/before --repeats 9
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: the repository root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Samples, Segment, format_table, interleave, median  # noqa: E402

__all__ = ["ROOT", "CASES", "TARGETS", "make_recording", "run_startup", "startup_rows", "cpu_seconds"]

ROOT = Path(__file__).resolve().parents[1]

# label -> the interpreter's arguments; "{file}" is the small recording
_MAIN = "from lorascope.cli import main; main()"
CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import typer'": ["-c", "import typer"],
    "lorascope --help": ["-c", _MAIN, "--help"],
    "lorascope record --help": ["-c", _MAIN, "record", "--help"],
    "lorascope sweep --help": ["-c", _MAIN, "sweep", "--help"],
    "lorascope info --help": ["-c", _MAIN, "info", "--help"],
    "lorascope analyze --help": ["-c", _MAIN, "analyze", "--help"],
    "lorascope report --help": ["-c", _MAIN, "report", "--help"],
    "lorascope info FILE": ["-c", _MAIN, "info", "{file}"],
}
TARGETS = {label: "< 0.3 s" for label in CASES if label.endswith("--help")} | {"lorascope info FILE": "< 1 s"}


def make_recording(folder: Path, snapshots: int = 20) -> Path:
    """A small recording (tiny GPT-2, 8 LoRA pairs, ``snapshots`` steps), written by the
    Recorder of the lorascope this process imports."""
    import torch

    from benchmarks.workloads import build_workload
    from lorascope.config import RecordConfig
    from lorascope.record import Recorder

    workload = build_workload("tiny-gpt2")
    model = workload.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    path = folder / "startup.h5"
    with Recorder(path, model, RecordConfig(every=1), run_name="startup", total_steps=snapshots) as rec:
        rec.start(optimizer)
        for step in range(1, snapshots + 1):
            with torch.no_grad():
                for p in params:
                    p.add_(torch.randn_like(p), alpha=1e-3)
            rec.on_optimizer_step(step, {"loss": 1.0 / step}, optimizer)
    return path


def _turn(argv: list[str], root: Path, bytecode: bool) -> Callable[[], Segment]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if bytecode:
        # as installed: compiled modules are cached (the untimed first round writes lorascope's
        # into the checkout's __pycache__, which git ignores). With PYTHONDONTWRITEBYTECODE=1, as
        # on these machines, every start compiles lorascope's modules again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)

    def turn() -> Segment:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"python {' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-1500:]}")
        # CPU seconds of the child: on a busy shared machine the wall time also counts the wait
        # for a core, the CPU time much less so
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return Segment([seconds], extra={"cpu": cpu})

    return turn


def run_startup(root: Path = ROOT, repeats: int = 7, cases: list[str] | None = None,
                log: Callable[[str], None] = lambda line: None, baseline: Path | None = None,
                bytecode: bool = True) -> dict[str, Samples]:
    """Times each case ``repeats`` times, interleaved, against the checkout at ``root`` (and the
    same cases against ``baseline``, labelled "... (baseline)", in the same rounds).
    ``bytecode=False`` keeps the environment's PYTHONDONTWRITEBYTECODE."""
    chosen = cases or list(CASES)
    roots = {"": root} | ({" (baseline)": baseline} if baseline is not None else {})
    with tempfile.TemporaryDirectory(prefix="lorascope-startup-") as tmp:
        file = make_recording(Path(tmp)) if any("{file}" in CASES[c] for c in chosen) else None
        turns = {label + tag: _turn([str(file) if a == "{file}" else a for a in CASES[label]], where, bytecode)
                 for label in chosen for tag, where in roots.items()}
        # one untimed round first: the first start of each reads its files from disk
        for turn in turns.values():
            turn()
        samples = interleave(turns, repeats)
    for label, s in samples.items():
        log(f"  {label:40s} median {median(s.step_seconds):.3f} s, CPU {median(cpu_seconds(s)):.3f} s")
    return samples


def cpu_seconds(samples: Samples) -> list[float]:
    return [seg.extra["cpu"] for seg in samples.segments]


def startup_rows(samples: dict[str, Samples]) -> list[dict]:
    return [{"command": label, "median": f"{median(s.step_seconds):.3f} s",
             "min": f"{min(s.step_seconds):.3f} s", "max": f"{max(s.step_seconds):.3f} s",
             "median CPU": f"{median(cpu_seconds(s)):.3f} s", "runs": str(len(s.step_seconds)),
             "target": TARGETS.get(label.removesuffix(" (baseline)"), "")}
            for label, s in samples.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/startup.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to time (default: this one)")
    ap.add_argument("--baseline", type=Path, default=None, help="a second checkout, timed in the same rounds")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE as the environment sets it (each start compiles lorascope)")
    ap.add_argument("--only", nargs="+", choices=list(CASES), default=None)
    args = ap.parse_args(argv)
    baseline = args.baseline.resolve() if args.baseline else None
    samples = run_startup(args.root.resolve(), args.repeats, args.only, log=print, baseline=baseline,
                          bytecode=not args.no_bytecode_cache)
    print(f"\n{args.root.resolve()}" + (f", baseline {baseline}" if baseline else "") + "\n"
          + format_table(startup_rows(samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
