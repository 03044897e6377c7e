"""The GPU check (issue 16), one table: the GPU tests (`pytest -m gpu`: fp16 + GradScaler with an
injected overflow, bf16, the pinned side-stream capture, the device-side update norms), recording
overhead against no recording, TensorBoard and wandb on GPT-2 small and on a 1.1B Llama built
from a config (bf16, LoRA r = 16 on every projection of every block, A and B recorded every
step), and training throughput against PEFT + the Hugging Face Trainer in bf16. It reuses the
suite's own benchmarks (`peers_overhead`, `throughput`); nothing is downloaded from a model hub.

    bash benchmarks/gpu_check.sh                  # on a GPU machine: installs, then runs this
    python -m benchmarks.gpu_check --dry-run      # on CPU: every section on tiny models

Sections run in order while the time budget lasts; one that would not fit, or that fails, is a
row saying so, never a silent gap. The table is rewritten to ``--markdown`` after each section,
so that a run cut short still leaves what it measured."""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import format_table, machine_info, median, paired_ratio, ratio  # noqa: E402
from lorascope.registry import Registry  # noqa: E402

__all__ = ["Plan", "PLANS", "SECTIONS", "Section", "Context", "run_check", "COLUMNS", "junit_rows", "collected_rows",
           "dry_verdict", "missing_imports", "main"]

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["check", "setting", "measured", "result", "goal", "verdict"]
OVERHEAD_GOAL = 1.02  # recording may cost under 2% of a step
BLOCKED_GOAL = 2.0  # the training thread held at most twice the raw copy of one snapshot


@dataclass(frozen=True)
class Plan:
    """What each section runs: the real sizes on a GPU, tiny ones for the dry run on CPU."""

    device: str
    gpt2: str
    llama: str
    gpt2_tokens: tuple[int, int]  # batch, sequence length
    llama_tokens: tuple[int, int]
    peer_steps: int  # optimizer steps per contender's turn, the first `warmup` not counted
    peer_repeats: int
    warmup: int
    train_steps: int
    train_repeats: int
    grad_accum: int
    pytest_args: tuple[str, ...]
    pytest_timeout_s: int
    sharded_nproc: int  # ranks of the sharded section: one per GPU (NCCL puts no two ranks on one GPU)
    sharded_kinds: tuple[str, ...]  # tests/sharded_worker.py kinds, each compared with its unsharded twin


PLANS = {
    "gpu": Plan("cuda", "gpt2-small", "llama-1b", (16, 512), (8, 512), peer_steps=12, peer_repeats=3, warmup=2,
                train_steps=8, train_repeats=3, grad_accum=2, pytest_args=("-m", "gpu", "-q", "-rfEs"),
                pytest_timeout_s=180, sharded_nproc=1, sharded_kinds=("fsdp2", "fsdp1", "zero3", "hf_fsdp2")),
    "dry-run": Plan("cpu", "tiny-gpt2", "tiny-llama", (1, 16), (1, 16), peer_steps=3, peer_repeats=1, warmup=1,
                    train_steps=2, train_repeats=1, grad_accum=2, pytest_args=("-m", "gpu", "-q", "--collect-only"),
                    pytest_timeout_s=300, sharded_nproc=1, sharded_kinds=("fsdp2",)),
}


@dataclass
class Context:
    plan: Plan
    dry_run: bool
    deadline: float  # time.monotonic() by which every section must have ended
    log: Callable[[str], None] = print
    rows: list[dict] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Section:
    run: Callable[[Context], list[dict]]
    needs_s: float  # about how long it takes on one H100; not started with less time left
    what: str  # one line for the plan that --dry-run prints


SECTIONS: Registry[Section] = Registry("GPU check section")


def _row(check: str, setting: str, measured: str, result: str, goal: str = "", verdict: str = "") -> dict:
    return dict(zip(COLUMNS, (check, setting, measured, result, goal, verdict)))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# --- the GPU tests ---------------------------------------------------------------------------

def junit_rows(xml_path: Path) -> list[dict]:
    """One row per test case of a pytest JUnit XML report."""
    rows = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '')}"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            message = (failed.get("message") or failed.text or "").strip().splitlines()
            rows.append(_row("pytest -m gpu", test, "outcome", "FAILED: " + (message[0][:160] if message else ""),
                             "passes", "MISSED"))
        elif skipped is not None:
            rows.append(_row("pytest -m gpu", test, "outcome", f"skipped: {skipped.get('message', '')[:160]}",
                             "passes", "MISSED"))
        else:
            rows.append(_row("pytest -m gpu", test, "outcome", f"passed ({float(case.get('time', 0)):.1f} s)",
                             "passes", "met"))
    return rows


def collected_rows(output: str) -> list[dict]:
    """The dry run's row: how many GPU tests ``pytest --collect-only -q`` found."""
    tests = [line for line in output.splitlines() if "::" in line]
    return [_row("pytest -m gpu", f"{len(tests)} tests collected", "outcome",
                 "not run (dry run: collected only)" if tests else "none collected: the gpu marker selects nothing",
                 "passes", "—" if tests else "MISSED")]


def _gpu_tests(ctx: Context) -> list[dict]:
    plan = ctx.plan
    with tempfile.TemporaryDirectory(prefix="lorascope-gpu-tests-") as tmp:
        report = Path(tmp) / "gpu-tests.xml"
        command = [sys.executable, "-m", "pytest", *plan.pytest_args, "-p", "no:cacheprovider",
                   f"--junitxml={report}", "tests"]
        ctx.log("  $ " + " ".join(["python", *command[1:]]))
        timeout = max(1, int(min(plan.pytest_timeout_s, ctx.left())))
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [_row("pytest -m gpu", "all GPU tests", "outcome", f"did not finish in {timeout} s",
                         "passes", "MISSED")]
        ctx.log(done.stdout[-3000:])
        if ctx.dry_run and done.returncode not in (0, 5):  # 5: nothing collected, which the row says
            return [_row("pytest -m gpu", "collecting the GPU tests", "outcome",
                         f"FAILED: pytest exit {done.returncode}: {done.stdout.strip()[-200:]}", "passes", "MISSED")]
        if ctx.dry_run:
            return collected_rows(done.stdout)
        if not report.exists():  # pytest itself failed before running anything
            return [_row("pytest -m gpu", "all GPU tests", "outcome",
                         f"pytest exit {done.returncode}: {(done.stderr or done.stdout).strip()[-200:]}",
                         "passes", "MISSED")]
        return junit_rows(report) or [_row("pytest -m gpu", "all GPU tests", "outcome", "no test ran",
                                           "passes", "MISSED")]


SECTIONS.register("gpu_tests")(Section(
    _gpu_tests, 90, "pytest -m gpu: fp16 + GradScaler with an injected overflow, bf16, the pinned "
                    "side-stream capture and the device-side update norms, on CUDA"))


# --- recording overhead ----------------------------------------------------------------------

DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}


def _setting(model: str, dtype_name: str, tokens: tuple[int, int], extra: str = "") -> str:
    batch, seq = tokens
    return f"{model}, base {DTYPE_NAMES[dtype_name]}, {batch}×{seq} tokens{extra}"


def _overhead(ctx: Context, model: str, dtype_name: str, tokens: tuple[int, int]) -> list[dict]:
    import torch

    from benchmarks.peers_overhead import run_peers

    plan = ctx.plan
    result = run_peers(model, steps=plan.peer_steps, repeats=plan.peer_repeats, warmup=plan.warmup,
                       device=plan.device, amp="bf16", dtype=getattr(torch, dtype_name),
                       batch_size=tokens[0], seq_len=tokens[1], log=ctx.log)
    setting = _setting(model, dtype_name, tokens)
    base = result.samples["none"]
    rows = []
    for name, samples in result.samples.items():
        if name == "none":
            continue
        step = ratio(samples.median_step, base.median_step)
        paired, low, high = paired_ratio(samples, base)
        ours = name == "lorascope"
        rows.append(_row("recording overhead", setting, f"step time {name} / none",
                         f"{step:.3f} (paired {paired:.3f} [{low:.2f}, {high:.2f}]; none "
                         f"{base.median_step * 1000:.1f} ms)", f"< {OVERHEAD_GOAL}" if ours else "",
                         _verdict(step < OVERHEAD_GOAL) if ours else ""))
        if ours:
            held = median([t for seg in samples.segments for t in seg.extra["hook_seconds"]])
            raw = result.raw_copy_seconds
            rows.append(_row("recording overhead", setting, "training thread blocked in the Recorder / step",
                             f"{ratio(held, base.median_step):.4f} ({held * 1000:.2f} ms per step)",
                             f"< {OVERHEAD_GOAL - 1:.2f}", _verdict(ratio(held, base.median_step) < OVERHEAD_GOAL - 1)))
            rows.append(_row("recording overhead", setting, "blocked / raw device→host copy of one snapshot",
                             f"{ratio(held, raw):.2f}× ({held * 1000:.2f} ms vs {raw * 1000:.2f} ms)",
                             f"≤ {BLOCKED_GOAL:g}×", _verdict(ratio(held, raw) <= BLOCKED_GOAL)))
    for name, why in result.skipped.items():
        rows.append(_row("recording overhead", setting, f"step time {name} / none", f"not run: {why}"))
    return rows


SECTIONS.register("overhead_gpt2")(Section(
    lambda ctx: _overhead(ctx, ctx.plan.gpt2, "float32", ctx.plan.gpt2_tokens), 60,
    "recording overhead vs none, TensorBoard, wandb: GPT-2 small, bf16 autocast"))
SECTIONS.register("overhead_llama")(Section(
    lambda ctx: _overhead(ctx, ctx.plan.llama, "bfloat16", ctx.plan.llama_tokens), 75,
    "recording overhead vs none, TensorBoard, wandb: Llama 1.1B from a config, bf16"))


# --- throughput ------------------------------------------------------------------------------

def _throughput(ctx: Context, model: str, dtype_name: str, tokens: tuple[int, int]) -> list[dict]:
    import torch

    from benchmarks.throughput import Settings, run_throughput

    plan = ctx.plan
    settings = Settings(steps=plan.train_steps, grad_accum=plan.grad_accum, batch_size=tokens[0],
                        seq_len=tokens[1], warmup=plan.warmup if plan.train_steps > plan.warmup else 1,
                        device=plan.device, amp="bf16")
    result = run_throughput(model, settings, repeats=plan.train_repeats, dtype=getattr(torch, dtype_name), log=ctx.log)
    ours, theirs = result.samples["lorascope"], result.samples["peft+Trainer"]
    speed = ratio(theirs.median_step, ours.median_step)
    paired, low, high = paired_ratio(theirs, ours)
    per_s = lambda s: result.tokens_per_step / s.median_step  # noqa: E731
    return [_row("throughput vs PEFT + HF Trainer", _setting(model, dtype_name, tokens, f" × {plan.grad_accum} accumulated"),
                 "tokens/s lorascope / PEFT+Trainer",
                 f"{speed:.3f} ({per_s(ours):,.0f} vs {per_s(theirs):,.0f} tokens/s; paired {paired:.3f} "
                 f"[{low:.2f}, {high:.2f}])", "≥ 1.0", _verdict(speed >= 1.0))]


SECTIONS.register("throughput_gpt2")(Section(
    lambda ctx: _throughput(ctx, ctx.plan.gpt2, "float32", ctx.plan.gpt2_tokens), 45,
    "tokens/s against PEFT + HF Trainer: GPT-2 small, bf16 autocast"))
SECTIONS.register("throughput_llama")(Section(
    lambda ctx: _throughput(ctx, ctx.plan.llama, "bfloat16", ctx.plan.llama_tokens), 60,
    "tokens/s against PEFT + HF Trainer: Llama 1.1B from a config, bf16"))


# --- sharded training ------------------------------------------------------------------------

SHARDED_TWINS = {"fsdp2": "plain", "fsdp1": "plain", "zero3": "plain", "hf_fsdp2": "hf"}  # compared with
SHARDED_GOAL = 1e-5


def _sharded(ctx: Context) -> list[dict]:
    """tests/sharded_worker.py on the device: the recording of each sharded kind (a plain loop under
    FSDP2, FSDP1, ZeRO-3; the HF Trainer under accelerate's FSDP2 plugin, which needs a GPU) against
    the unsharded recording of the same run: the largest difference of any recorded series."""
    import importlib.util

    from tests.sharded_worker import differences

    plan, worker = ctx.plan, str(ROOT / "tests" / "sharded_worker.py")
    kinds = [k for k in plan.sharded_kinds if k != "zero3" or importlib.util.find_spec("deepspeed") is not None]
    setting = (f"tiny PEFT Llama, {plan.sharded_nproc} rank(s) on {plan.device} "
               f"({'NCCL' if plan.device == 'cuda' else 'gloo'}), 3 steps, grads + AdamW state + W0")
    rows = [_row("sharded recording", setting, k, "not run: deepspeed does not import (pip install deepspeed)",
                 f"≤ {SHARDED_GOAL:g}", "MISSED") for k in plan.sharded_kinds if k not in kinds]
    twins = sorted({SHARDED_TWINS[k] for k in kinds})
    timeout = max(1, int(ctx.left()))
    with tempfile.TemporaryDirectory(prefix="lorascope-sharded-check-") as tmp:
        for command in ([sys.executable, worker, f"{tmp}/ref.h5", "--full", "--device", plan.device, "--kind", *twins],
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                         str(plan.sharded_nproc), worker, f"{tmp}/run.h5", "--full", "--device", plan.device,
                         "--kind", *kinds]):
            ctx.log("  $ " + " ".join(["python", *command[1:]]))
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
                return rows + [_row("sharded recording", setting, " ".join(kinds),
                                    f"failed: exit {done.returncode}: {last[0][:200]}", f"≤ {SHARDED_GOAL:g}", "MISSED")]
        for kind in kinds:
            twin = f"{tmp}/ref.h5" if len(twins) == 1 else f"{tmp}/ref-{SHARDED_TWINS[kind]}.h5"
            run = f"{tmp}/run.h5" if len(kinds) == 1 else f"{tmp}/run-{kind}.h5"
            gaps = differences(twin, run)
            worst = max(gaps, key=gaps.get)
            rows.append(_row("sharded recording", setting, f"{kind} vs {SHARDED_TWINS[kind]}: largest difference",
                             f"{gaps[worst]:.2e} (largest in {worst}; {len(gaps)} series)", f"≤ {SHARDED_GOAL:g}",
                             _verdict(gaps[worst] <= SHARDED_GOAL)))
    if "hf_fsdp2" not in kinds:
        rows.append(_row("sharded recording", setting, "hf_fsdp2", "GPU only: accelerate applies its FSDP plugin on "
                         "accelerators only (on CPU the Trainer trains plain data parallel)", "", "—"))
    return rows


SECTIONS.register("sharded")(Section(
    _sharded, 75, "sharded recording on the GPU: a plain loop under FSDP2, FSDP1 and ZeRO-3, and the HF Trainer "
                  "under accelerate's FSDP2 plugin, each against its unsharded twin (one rank per GPU)"))


# --- running it ------------------------------------------------------------------------------

def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_check(ctx: Context, names: list[str] | None = None, markdown: Path | None = None,
              header: str = "", sections: Registry[Section] = SECTIONS) -> list[dict]:
    """Runs the sections in order while the budget lasts; each adds its rows (a failure or a
    section that would not fit adds one row saying so)."""
    for name in names or sections.names():
        section = sections.get(name)
        left = ctx.left()
        ctx.log(f"== {name} ({left:.0f} s left)")
        if left < section.needs_s:
            ctx.rows.append(_row(name, section.what, "—", f"not run: {left:.0f} s of the budget left, it needs "
                                 f"about {section.needs_s:.0f} s", "", "MISSED"))
            continue
        start = time.monotonic()
        try:
            ctx.rows.extend(section.run(ctx))
        except Exception as exc:  # one broken section must not hide the others' rows
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            ctx.rows.append(_row(name, section.what, "—", f"failed: {type(exc).__name__}: {first}", "", "MISSED"))
        finally:
            _free_memory()
        ctx.log(f"   {name}: {time.monotonic() - start:.0f} s")
        if markdown is not None:
            markdown.write_text(header + format_table(ctx.rows, COLUMNS) + "\n")
    return ctx.rows


def describe_plan(plan: Plan) -> str:
    """What a GPU run does, section by section: the dry run prints it."""
    lines = [f"On a GPU this runs ({plan.device}; GPT-2 {plan.gpt2_tokens[0]}×{plan.gpt2_tokens[1]} tokens, "
             f"Llama {plan.llama_tokens[0]}×{plan.llama_tokens[1]}; {plan.peer_steps} steps × "
             f"{plan.peer_repeats} repetitions per recording contender, {plan.train_steps} × "
             f"{plan.train_repeats} per trainer):"]
    for name in SECTIONS.names():
        section = SECTIONS.get(name)
        lines.append(f"  {name:<18} ~{section.needs_s:>3.0f} s  {section.what}")
    return "\n".join(lines)


def _header(dry_run: bool, install_s: float | None) -> str:
    info = machine_info()
    import torch

    cuda = torch.version.cuda or "none"
    what = "DRY RUN on CPU with tiny models: the numbers check the code paths, they measure nothing" if dry_run \
        else f"GPU {info.get('gpu', 'none')}"
    lines = [f"GPU check: {what}",
             f"torch {info['torch']} (CUDA {cuda}), python {info['python']}, {info['nproc']} CPUs, {info['date']}"
             + (f", install {install_s:.0f} s" if install_s is not None else ""),
             "Every run: bf16 autocast; LoRA r = 16, alpha 32 on every attention and MLP projection of every "
             "block; AdamW, clipping 1.0; the recorders store every step. 'base' is the frozen weights' dtype "
             "(LoRA factors are fp32)."]
    return "\n".join(lines) + "\n\n"


# what the sections import, checked first so that a missing package is one line, not a failed row each
NEEDED = ("torch", "transformers", "peft", "h5py", "pytest", "tensorboard", "wandb", "lorascope")


def missing_imports(modules: tuple[str, ...] = NEEDED) -> list[str]:
    """``"module (error)"`` for each of ``modules`` that does not import."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a package broken at import time
            missing.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="on CPU, tiny models: check the code paths")
    ap.add_argument("--budget-s", type=float, default=330.0, help="seconds for all sections together")
    ap.add_argument("--only", nargs="+", choices=SECTIONS.names(), default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here (after each section)")
    ap.add_argument("--install-seconds", type=float, default=None, help="how long the install took (for the header)")
    args = ap.parse_args(argv)
    plan = PLANS["dry-run" if args.dry_run else "gpu"]
    missing = missing_imports()
    if missing:
        print(f"error: cannot import {', '.join(missing)}; run bash scripts/setup.sh --dev first", file=sys.stderr)
        return 2
    print(f"imports: {', '.join(NEEDED)}: ok", flush=True)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("error: this torch sees no CUDA GPU; run on a GPU machine, or use --dry-run to check the code on CPU",
                  file=sys.stderr)
            return 2
    print(describe_plan(PLANS["gpu"]), flush=True)
    ctx = Context(plan, args.dry_run, time.monotonic() + args.budget_s, log=lambda line: print(line, flush=True))
    header = _header(args.dry_run, args.install_seconds)
    rows = run_check(ctx, args.only, args.markdown, header)
    if args.dry_run:
        rows = [dry_verdict(row) for row in rows]
    print("\n" + header + format_table(rows, COLUMNS), flush=True)
    return 1 if any(row["verdict"] == "MISSED" for row in rows) else 0


def dry_verdict(row: dict) -> dict:
    """A dry run checks code paths, not speed: only a section that failed or did not run misses."""
    broken = row["result"].startswith(("failed", "not run: ", "FAILED", "none collected"))
    return {**row, "verdict": "MISSED" if broken else "—"}


if __name__ == "__main__":
    sys.exit(main())
