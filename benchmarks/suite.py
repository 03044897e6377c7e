"""The whole benchmark suite behind ``python -m benchmarks``: recording overhead against TensorBoard
and wandb, training throughput against PEFT + Trainer, analysis throughput, report time, the
recording size and the command line's start-up time, each at a chosen scale, summarised in one
table.

The analysis and report benchmarks belong to their owners' scripts: ``analysis_speed.run``
is called in this process (it returns its numbers); ``report_time.py`` only prints, so it runs
as a subprocess with small arguments and its result lines are parsed into the summary.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.common import format_table, machine_info, median, paired_ratio, ratio
from lorascope.registry import Registry

__all__ = ["Scale", "SCALES", "SUITE", "Outcome", "run_suite", "summary_table", "parse_report"]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Scale:
    """How much of each benchmark to run."""

    models: tuple[str, ...]
    peer_steps: int
    peer_repeats: int
    train_steps: int
    train_repeats: int
    grad_accum: int
    analysis: dict  # keyword arguments of analysis_speed.run: layers, snapshots, loop_snapshots
    analysis_file_args: tuple[str, ...]  # arguments of analysis_h5.py: a recording file, analysed as the CLI does
    report_args: tuple[str, ...]
    size_snapshots: tuple[int, int]
    size_dtypes: tuple[str, ...]
    startup_repeats: int = 7  # fresh interpreters per command line timed


SCALES: dict[str, Scale] = {
    # seconds, on a tiny model: for the smoke test
    "smoke": Scale(("tiny-gpt2",), 3, 1, 3, 1, 2,
                   {"layers": 1, "snapshots": 12, "loop_snapshots": 1},
                   ("--layers", "1", "--snapshots", "12", "--repeat", "1", "--variants", "default"),
                   ("--runs", "2", "--steps", "3", "--compare-modules", "1", "--repeats", "1"),
                   (2, 3), ("float32",), startup_repeats=1),
    # a few minutes on GPT-2 small
    "quick": Scale(("gpt2-small",), 4, 3, 4, 3, 2,
                   {"layers": 1, "snapshots": 100, "loop_snapshots": 2},
                   ("--layers", "1", "--snapshots", "2000", "--repeat", "2"),
                   ("--runs", "6", "--steps", "20", "--compare-modules", "1", "--repeats", "1"),
                   (2, 6), ("float32", "float16")),
    # the long version: both models, the owners' full settings
    "full": Scale(("gpt2-small", "smollm2-135m"), 10, 5, 8, 5, 2,
                  {"layers": 12, "snapshots": 2000, "loop_snapshots": 3},
                  ("--layers", "12", "--snapshots", "2000", "--repeat", "2"), ("--runs", "6", "--steps", "100"),
                  (3, 11), ("float32", "float16", "bfloat16"), startup_repeats=15),
}


@dataclass
class Outcome:
    """One benchmark's contribution: summary rows (benchmark, measured, result, target) and its
    own detailed table."""

    name: str
    summary: list[dict] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


Bench = Callable[[Scale, Callable[[str], None]], Outcome]
SUITE: Registry[Bench] = Registry("benchmark")


def _row(benchmark: str, measured: str, result: str, target: str = "") -> dict:
    return {"benchmark": benchmark, "measured": measured, "result": result, "target": target}


@SUITE.register("peers")
def _peers(scale: Scale, log: Callable[[str], None]) -> Outcome:
    from benchmarks.peers_overhead import peers_rows, run_peers
    from benchmarks.workloads import available_workloads

    out = Outcome("peers")
    usable, skipped = available_workloads(list(scale.models))
    rows = []
    for model in usable:
        result = run_peers(model, steps=scale.peer_steps, repeats=scale.peer_repeats, log=log)
        rows += peers_rows(result)
        base = result.samples["none"]
        for name, s in result.samples.items():
            if name == "none":
                continue
            target = "< 1.02 and below both peers" if name == "lorascope" else ""
            paired, low, high = paired_ratio(s, base)
            out.summary.append(_row(f"recording overhead, {model}", f"step time {name} / none",
                                    f"{ratio(s.median_step, base.median_step):.3f} (paired {paired:.3f} "
                                    f"[{low:.2f}, {high:.2f}])", target))
            if name == "lorascope":
                held = median([t for seg in s.segments for t in seg.extra["hook_seconds"]])
                out.summary.append(_row(f"recording overhead, {model}",
                                        "training thread inside the Recorder's hooks / step time of none",
                                        f"{ratio(held, base.median_step):.4f} ({held * 1000:.1f} ms per step)",
                                        "< 0.01"))
        for name, why in result.skipped.items():
            out.summary.append(_row(f"recording overhead, {model}", f"step time {name} / none", "not run", why))
    for model in skipped:
        out.summary.append(_row(f"recording overhead, {model}", "—", "skipped", "no converted cache"))
    out.detail = format_table(rows)
    return out


@SUITE.register("throughput")
def _throughput(scale: Scale, log: Callable[[str], None]) -> Outcome:
    from benchmarks.throughput import Settings, run_throughput, throughput_rows
    from benchmarks.workloads import available_workloads

    out = Outcome("throughput")
    usable, skipped = available_workloads(list(scale.models))
    settings = Settings(steps=scale.train_steps, grad_accum=scale.grad_accum)
    rows = []
    for model in usable:
        result = run_throughput(model, settings, repeats=scale.train_repeats, log=log)
        rows += throughput_rows(result)
        ours, theirs = result.samples["lorascope"], result.samples["peft+Trainer"]
        paired, low, high = paired_ratio(theirs, ours)
        out.summary.append(_row(f"training throughput, {model}", "tokens/s lorascope / PEFT+Trainer",
                                f"{ratio(theirs.median_step, ours.median_step):.3f} (paired {paired:.3f} "
                                f"[{low:.2f}, {high:.2f}])", ">= 1.0"))
    for model in skipped:
        out.summary.append(_row(f"training throughput, {model}", "—", "skipped", "no converted cache"))
    out.detail = format_table(rows)
    return out


@SUITE.register("recording_size")
def _size(scale: Scale, log: Callable[[str], None]) -> Outcome:
    from benchmarks.recording_size import measure_sizes, size_rows

    out = Outcome("recording_size")
    model = scale.models[0]
    few, many = scale.size_snapshots
    results = measure_sizes(model, dtypes=scale.size_dtypes, few=few, many=many)
    for r in results:
        out.summary.append(_row(f"recording size, {model}", f"bytes on disk / raw A+B bytes, {r.dtype}",
                                f"{r.per_snapshot / r.raw:.4f}"))
    out.detail = format_table(size_rows(results))
    return out


def _script(name: str, args: tuple[str, ...], log: Callable[[str], None]) -> str:
    """Runs one of the owners' benchmark scripts and returns what it printed."""
    command = [sys.executable, str(HERE / name), *args]
    log("  $ " + " ".join(["python", f"benchmarks/{name}", *args]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks/{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def parse_report(text: str) -> dict[str, float]:
    """The numbers ``report_time.py`` prints: full-report seconds, PNG count, and the
    fresh/reused figure ratio."""
    patterns = {
        "report_s": r"full report: ([\d.]+) s",
        "pngs": r"\((\d+) PNGs\)",
        "fresh_over_reused": r"fresh/reused = ([\d.]+)x",
    }
    return _parse(text, patterns, "report_time.py")


def parse_analysis_file(text: str) -> dict[str, dict[str, float]]:
    """Per variant, the numbers ``analysis_h5.py`` prints on its summary lines: median seconds
    and peak memory as a multiple of the largest module's series, plus the file's shape."""
    found = {m.group(1): {"median_s": float(m.group(2)), "peak_x": float(m.group(3))}
             for m in re.finditer(r"^(\S+) +stats \+ health.*: median ([\d.]+) s, .*peak ([\d.]+)x", text, re.M)}
    if not found:
        raise RuntimeError(f"benchmarks/analysis_h5.py printed no summary line; its output format changed:\n{text[-1500:]}")
    shape = _parse(text, {"modules": r"(\d+) modules x", "snapshots": r"modules x (\d+) snapshots",
                          "gib": r"snapshots, ([\d.]+) GiB"}, "analysis_h5.py")
    return {"shape": shape, **found}


def _parse(text: str, patterns: dict[str, str], script: str) -> dict[str, float]:
    found = {}
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"benchmarks/{script} printed no line matching {pattern!r}; its output "
                               f"format changed:\n{text[-1500:]}")
        found[key] = float(match.group(1))
    return found


@SUITE.register("analysis")
def _analysis(scale: Scale, log: Callable[[str], None]) -> Outcome:
    import warnings

    from benchmarks import analysis_speed

    lines: list[str] = []
    with warnings.catch_warnings():
        # scipy's reference fits in the per-matrix loop overflow on some tails and say so per call
        warnings.simplefilter("ignore", RuntimeWarning)
        result = analysis_speed.run(**scale.analysis, log=lines.append)
    shape = f"{result.modules} modules × {result.snapshots} snapshots"
    return Outcome("analysis", [
        _row(f"analysis throughput, {shape}", "per-matrix numpy/scipy loop / lorascope batched",
             f"{result.ratio:.1f}", ">= 20"),
        _row(f"analysis throughput, {shape}", "worst relative disagreement, stats/spectra",
             f"{result.worst['stats']:.1e}", "agree"),
    ], "\n".join(lines + ["", f"batched {result.batched_s:.1f} s, loop (estimated from {result.loop_timed} "
                                f"timed snapshots) {result.loop_s:.1f} s"]))


@SUITE.register("analysis_file")
def _analysis_file(scale: Scale, log: Callable[[str], None]) -> Outcome:
    text = _script("analysis_h5.py", scale.analysis_file_args, log)
    numbers = parse_analysis_file(text)
    shape = numbers.pop("shape")
    what = f"analysis of a file, {shape['modules']:.0f} modules × {shape['snapshots']:.0f} snapshots ({shape['gib']:.1f} GiB)"
    rows = []
    for variant, n in numbers.items():
        rows.append(_row(what, f"`lorascope analyze` (stats, health) seconds, {variant}", f"{n['median_s']:.1f} s",
                         "well under 60 s" if shape["modules"] >= 48 else ""))
        rows.append(_row(what, f"peak memory / largest module's A+B series, {variant}", f"{n['peak_x']:.2f}",
                         "about 1" if variant == "default" else ""))
    return Outcome("analysis_file", rows, text.strip())


@SUITE.register("report")
def _report(scale: Scale, log: Callable[[str], None]) -> Outcome:
    text = _script("report_time.py", scale.report_args, log)
    numbers = parse_report(text)
    runs = scale.report_args[scale.report_args.index("--runs") + 1] if "--runs" in scale.report_args else "6"
    return Outcome("report", [
        _row(f"report time, {runs} runs", "seconds for the full comparison report",
             f"{numbers['report_s']:.1f} s ({numbers['pngs']:.0f} PNGs)"),
        _row(f"report time, {runs} runs", "fresh figures / reused figures", f"{numbers['fresh_over_reused']:.2f}"),
    ], text.strip())


@SUITE.register("startup")
def _startup(scale: Scale, log: Callable[[str], None]) -> Outcome:
    from benchmarks.startup import TARGETS, cpu_seconds, run_startup, startup_rows

    samples = run_startup(repeats=scale.startup_repeats, log=log)
    rows = [_row(f"start-up, {label}", f"seconds, median of {len(s.step_seconds)} fresh processes",
                 f"{median(s.step_seconds):.2f} s (CPU {median(cpu_seconds(s)):.2f} s)", TARGETS.get(label, ""))
            for label, s in samples.items()]
    return Outcome("startup", rows, format_table(startup_rows(samples)))


def run_suite(scale: Scale, names: list[str] | None = None,
              log: Callable[[str], None] = lambda line: None, suite: Registry[Bench] = SUITE) -> list[Outcome]:
    """Runs the chosen benchmarks (all of ``suite`` by default) in suite order. A benchmark that
    fails shows as a failed row, so the others still report."""
    outcomes = []
    for name in names or suite.names():
        bench = suite.get(name)
        log(f"== {name}")
        start = time.perf_counter()
        try:
            outcome = bench(scale, log)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            outcome = Outcome(name, [_row(name, "—", "failed", first)], f"{type(exc).__name__}: {exc}")
        outcome.seconds = time.perf_counter() - start
        outcomes.append(outcome)
    return outcomes


def summary_table(outcomes: list[Outcome]) -> str:
    return format_table([row for o in outcomes for row in o.summary],
                        ["benchmark", "measured", "result", "target"])


def render(outcomes: list[Outcome], command: str) -> str:
    """The markdown a README records: the machine, the command, the summary and each detail."""
    info = machine_info()
    lines = [f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             summary_table(outcomes), ""]
    for o in outcomes:
        lines += [f"### {o.name} ({o.seconds:.0f} s)", ""]
        lines += [o.detail, ""] if o.detail.startswith("|") else ["```", o.detail, "```", ""]
    return "\n".join(lines)
