"""Recording overhead against the tools people use today: the same LoRA training loop (lorascope's
``train_loop``, AdamW; by default fp32 on CPU, batch 1 × 128; on a GPU with ``--device cuda
--amp bf16``) run

    none         without recording;
    lorascope    with lorascope's Recorder storing A and B of every LoRA module every step;
    tensorboard  with ``SummaryWriter.add_histogram`` of every LoRA parameter every step;
    wandb        with ``wandb.watch(model, log="parameters", log_freq=1)``, offline

interleaved (the order rotates each repetition) over several repetitions. Printed per contender:
the median step time, its ratio to ``none``, the spread, the time the training thread spent in
the contender's loop hooks (for lorascope also against the raw device→host copy of one snapshot
of every A and B), the seconds spent closing, the bytes written and what was kept.

    OMP_NUM_THREADS=1 python -m benchmarks.peers_overhead                      # quick: GPT-2 small
    OMP_NUM_THREADS=1 python -m benchmarks.peers_overhead --full               # + SmolLM2-135M, longer
    python -m benchmarks.peers_overhead --device cuda --amp bf16 --batch 8 --seq 512
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Samples, Segment, folder_bytes, format_bytes, format_table, interleave, median, paired_ratio, random_batches,
    ratio,
)
from benchmarks.workloads import Workload, available_workloads, build_workload  # noqa: E402
from lorascope.registry import Registry  # noqa: E402

__all__ = ["WATCHERS", "Watcher", "PeersResult", "run_peers", "peers_rows", "raw_copy_seconds", "wandb_available"]


class Watcher:
    """One way of watching the weights: ``begin`` returns the hooks the loop calls (or None),
    ``end`` closes whatever was opened and says what was written and kept."""

    label = ""

    def begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path,
              steps: int) -> Any:
        return None

    def end(self) -> dict:
        return {"bytes": 0, "kept": "nothing"}


WATCHERS: Registry[Callable[[], Watcher]] = Registry("recording contender")


def _lora_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    from lorascope.record import find_lora_pairs

    return [(f"{name}.{m}", getattr(pair, m)) for name, pair in find_lora_pairs(model).items() for m in "AB"]


@WATCHERS.register("none")
class NoRecording(Watcher):
    label = "no recording"


@WATCHERS.register("lorascope")
class LorascopeRecording(Watcher):
    label = "lorascope Recorder, every step"

    def begin(self, model, optimizer, folder, steps):
        from lorascope.config import RecordConfig
        from lorascope.record import Recorder

        self.path = folder / "run.h5"
        self.rec = Recorder(self.path, model, RecordConfig(every=1), run_name="bench", total_steps=steps)
        self.rec.start(optimizer)
        pairs = self.rec.modules.values()
        self.values = sum(p.A.numel() + p.B.numel() for p in pairs)
        self.matrices = 2 * len(pairs)
        return self.rec

    def end(self):
        self.rec.close("complete")
        return {"bytes": self.path.stat().st_size,
                "kept": f"full A and B, fp32 ({self.matrices} matrices, {self.values:,} values) + scalars"}


class _HistogramHooks:
    def __init__(self, on_step: Callable[[int, dict], None]) -> None:
        self.on_step = on_step

    def on_micro_step(self, micro_step: int, loss_scale: float = 1.0) -> None:
        pass

    def on_optimizer_step(self, step: int, scalars: dict, optimizer=None) -> None:
        self.on_step(step, scalars)

    def log_eval(self, step: int, metrics: dict) -> None:
        pass


@WATCHERS.register("tensorboard")
class TensorBoardHistograms(Watcher):
    label = "TensorBoard add_histogram of every LoRA parameter, every step"

    def begin(self, model, optimizer, folder, steps):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder / "tb"
        self.writer = SummaryWriter(str(self.folder))
        params = _lora_params(model)
        self.count = len(params)

        def on_step(step: int, scalars: dict) -> None:
            self.writer.add_scalar("loss", scalars["loss"], step)
            for name, param in params:
                self.writer.add_histogram(name, param, step)

        return _HistogramHooks(on_step)

    def end(self):
        self.writer.close()
        return {"bytes": folder_bytes(self.folder),
                "kept": f"histograms ('tensorflow' buckets) of {self.count} LoRA matrices + loss"}


def wandb_available() -> str:
    """Empty when wandb can run here, else why not."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return "wandb is not installed (pip install wandb)"
    return ""


@WATCHERS.register("wandb")
class WandbWatch(Watcher):
    label = 'wandb.watch(log="parameters", log_freq=1), offline'

    def begin(self, model, optimizer, folder, steps):
        import wandb

        self.folder = folder / "wandb"
        self.folder.mkdir()
        wanted = {"WANDB_MODE": "offline", "WANDB_DIR": str(self.folder), "WANDB_SILENT": "true"}
        self.saved_env = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)
        self.model = model
        self.run = wandb.init(project="lorascope-bench", dir=str(self.folder), mode="offline",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        self.run.watch(model, log="parameters", log_freq=1)
        # wandb.watch histograms every parameter the module holds, the frozen base included.
        self.count = sum(1 for _ in model.parameters())
        # The watch hook adds its histograms to the open history row; a log call commits them.
        return _HistogramHooks(lambda step, scalars: self.run.log({"loss": scalars["loss"]}))

    def end(self):
        self.run.unwatch(self.model)
        self.run.finish()
        for key, value in self.saved_env.items():  # the folder is about to be deleted
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return {"bytes": folder_bytes(self.folder),
                "kept": f"64-bin histograms of all {self.count} parameter tensors (frozen base included) + loss"}


class _TimedHooks:
    """Passes the loop's calls on to a contender's hooks and adds up the seconds spent in them
    per optimizer step: the time the training thread is held, which a shared machine's noise
    barely touches, unlike the step time around it. A contender whose work happens elsewhere
    (wandb's forward hook) shows only what its loop hooks cost."""

    def __init__(self, hooks: Any) -> None:
        self.hooks = hooks
        self.per_step: list[float] = []
        self._current = 0.0

    def on_micro_step(self, micro_step: int, loss_scale: float = 1.0) -> None:
        start = time.perf_counter()
        self.hooks.on_micro_step(micro_step, loss_scale=loss_scale)
        self._current += time.perf_counter() - start

    def on_optimizer_step(self, step: int, scalars: dict, optimizer=None) -> None:
        start = time.perf_counter()
        self.hooks.on_optimizer_step(step, scalars, optimizer=optimizer)
        self.per_step.append(self._current + time.perf_counter() - start)
        self._current = 0.0

    def log_eval(self, step: int, metrics: dict) -> None:
        self.hooks.log_eval(step, metrics)


@dataclass
class PeersResult:
    workload: str
    description: str
    steps: int
    repeats: int
    samples: dict[str, Samples]
    skipped: dict[str, str]  # contender -> why it did not run
    raw_copy_seconds: float = float("nan")  # one synchronous device→host copy of every A and B


def raw_copy_seconds(model: torch.nn.Module, device: str, repeats: int = 20) -> float:
    """Median seconds of one device→host copy of every LoRA A and B into a preallocated float32
    host buffer (pinned on CUDA), waited for: the floor that a recorder's capture is held to."""
    from benchmarks.record_overhead import RawCopy, sync

    copy = RawCopy([param for _, param in _lora_params(model)], device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        copy()
        sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


def _segment(workload: Workload, optimizer, watcher: Watcher, batches, steps: int, warmup: int,
             root: Path, device: str = "cpu", amp: str = "off") -> Segment:
    from benchmarks.record_overhead import sync
    from lorascope.train.amp import resolve_precision
    from lorascope.train.loop import train_loop

    folder = Path(tempfile.mkdtemp(dir=root))
    hooks = watcher.begin(workload.model, optimizer, folder, steps)
    timed = _TimedHooks(hooks) if hooks is not None else None
    stamps: list[float] = []

    def stamp(state, loss) -> None:
        sync(device)  # a step ends when the GPU has done its work, not when it was queued
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    train_loop(model=workload.model, optimizer=optimizer, scheduler=None, train_data=batches,
               device=torch.device(device), precision=resolve_precision(amp, torch.device(device)),
               total_steps=steps, max_grad_norm=1.0, hooks=timed, progress=stamp)
    finished = time.perf_counter()
    extra = watcher.end()
    extra["hook_seconds"] = timed.per_step[warmup:] if timed is not None else [0.0] * (steps - warmup)
    finish = time.perf_counter() - finished
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return Segment(times[warmup:], finish, extra)


def run_peers(workload: str = "gpt2-small", *, steps: int = 4, repeats: int = 3, warmup: int = 1,
              contenders: list[str] | None = None, threads: int = 1, rank: int = 16,
              device: str = "cpu", amp: str = "off", dtype: torch.dtype | None = None,
              batch_size: int = 1, seq_len: int = 128,
              log: Callable[[str], None] | None = None) -> PeersResult:
    """Trains ``workload`` (on ``device``, its frozen base in ``dtype``, under the ``amp``
    precision of ``lorascope record --amp``) for ``steps`` optimizer steps of ``batch_size`` ×
    ``seq_len`` tokens per turn with each contender in turn, ``repeats`` times; the first
    ``warmup`` steps of each turn are not counted (the first step opens files and allocates
    optimizer state)."""
    from lorascope.config import OptimConfig
    from lorascope.train.optim import build_optimizer

    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup}) to measure anything")
    torch.set_num_threads(threads)
    names = contenders or WATCHERS.names()
    skipped = {}
    if "wandb" in names and (why := wandb_available()):
        skipped["wandb"] = why
        names = [n for n in names if n != "wandb"]
    work = build_workload(workload, rank=rank, seq_len=seq_len, device=device, dtype=dtype)
    optimizer = build_optimizer(work.model, OptimConfig(lr=1e-4))
    batches = random_batches(steps, work.seq_len, work.vocab_size, batch_size=batch_size)
    watchers = {name: WATCHERS.get(name)() for name in names}
    with tempfile.TemporaryDirectory(prefix="lorascope-peers-") as tmp:
        root = Path(tmp)
        samples = interleave(
            {name: (lambda w=w: _segment(work, optimizer, w, batches, steps, warmup, root, device, amp))
             for name, w in watchers.items()},
            repeats, log=log,
        )
    return PeersResult(workload, work.description, steps, repeats, samples, skipped,
                       raw_copy_seconds(work.model, device))


def peers_rows(result: PeersResult) -> list[dict]:
    """One table row per contender; step ratios are against 'none' when it ran."""
    base = result.samples.get("none")
    baseline = base.median_step if base else float("nan")
    rows = []
    for name, s in result.samples.items():
        times = sorted(s.step_seconds)
        q1, q3 = times[len(times) // 4], times[(3 * len(times)) // 4]
        paired, low, high = paired_ratio(s, base) if base else (float("nan"),) * 3
        hooks = median([t for seg in s.segments for t in seg.extra.get("hook_seconds", [])])
        rows.append({
            "model": result.workload,
            "contender": name,
            "median step": f"{s.median_step * 1000:.0f} ms",
            "ratio to none": f"{ratio(s.median_step, baseline):.3f}",
            "paired ratio [min, max]": f"{paired:.3f} [{low:.2f}, {high:.2f}]",
            "IQR / median": f"{(q3 - q1) / s.median_step:.0%}" if s.median_step > 0 else "—",
            "in loop hooks per step": f"{hooks * 1000:.1f} ms ({ratio(hooks, baseline):.2%})",
            "hooks / raw copy": (f"{ratio(hooks, result.raw_copy_seconds):.2f} "
                                 f"({result.raw_copy_seconds * 1000:.2f} ms)" if name == "lorascope" else ""),
            "close": f"{s.median_finish:.2f} s",
            "written per run": format_bytes(s.last("bytes", float("nan"))),
            "kept": s.last("kept", ""),
        })
    for name, why in result.skipped.items():
        rows.append({"model": result.workload, "contender": name, "kept": f"not run: {why}"})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="both models, 10 steps × 5 repetitions")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per turn (first one not counted)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--contenders", nargs="+", default=None, choices=WATCHERS.names())
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    models = args.models or (["gpt2-small", "smollm2-135m"] if args.full else ["gpt2-small"])
    steps = args.steps or (10 if args.full else 4)
    repeats = args.repeats or (5 if args.full else 3)
    usable, missing = available_workloads(models)
    for name in missing:
        print(f"{name}: skipped (its converted cache does not exist; run `lorascope record` once)")
    rows = []
    for name in usable:
        print(f"{name}: {steps} steps per turn × {repeats} repetitions, {args.threads} torch thread(s)", flush=True)
        result = run_peers(name, steps=steps, repeats=repeats, contenders=args.contenders,
                           threads=args.threads, device=args.device, amp=args.amp, batch_size=args.batch,
                           seq_len=args.seq, log=lambda line: print(line, flush=True))
        rows += peers_rows(result)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
