"""Training throughput: lorascope's trainer (``add_lora`` + ``train_loop``) against PEFT + the
Hugging Face ``Trainer`` on the same model, LoRA targets (every attention and MLP projection of
every block), rank, alpha, batch, gradient accumulation, optimizer (``torch.optim.AdamW``, constant
lr, clipping at 1.0), device and precision (fp32 on CPU by default; ``--device cuda --amp bf16``:
bf16 autocast in both, the Trainer's ``bf16=True``), on the same random-token batches, interleaved.
Neither side records anything. Printed: median seconds per optimizer step, tokens per second and
the ratio lorascope / Trainer (above 1 = lorascope is faster).

    OMP_NUM_THREADS=1 python -m benchmarks.throughput             # quick: GPT-2 small
    OMP_NUM_THREADS=1 python -m benchmarks.throughput --full      # + SmolLM2-135M, longer
    python -m benchmarks.throughput --device cuda --amp bf16 --batch 8 --seq 512
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Samples, Segment, format_table, interleave, paired_ratio, random_batches, ratio,
)
from benchmarks.workloads import Workload, available_workloads, build_workload  # noqa: E402

__all__ = ["Settings", "ThroughputResult", "run_throughput", "throughput_rows"]


@dataclass(frozen=True)
class Settings:
    """What both trainers share."""

    steps: int = 4  # optimizer steps per turn; the first is not counted
    grad_accum: int = 2
    batch_size: int = 1
    lr: float = 1e-4
    max_grad_norm: float = 1.0
    warmup: int = 1
    seq_len: int = 128
    device: str = "cpu"
    amp: str = "off"  # lorascope's --amp: off, bf16, fp16 (the Trainer's bf16= / fp16=)

    @property
    def micro_batches(self) -> int:
        return self.steps * self.grad_accum


def _stamp(stamps: list[float], device: str) -> None:
    from benchmarks.record_overhead import sync

    sync(device)  # a step ends when the GPU has done its work, not when it was queued
    stamps.append(time.perf_counter())


def _lorascope_turn(work: Workload, batches: list[dict], s: Settings) -> Segment:
    from lorascope.train.amp import resolve_precision
    from lorascope.config import OptimConfig
    from lorascope.train.optim import build_optimizer
    from lorascope.train.loop import train_loop

    device = torch.device(s.device)
    optimizer = build_optimizer(work.model, OptimConfig(lr=s.lr))
    stamps: list[float] = []
    start = time.perf_counter()
    train_loop(model=work.model, optimizer=optimizer, scheduler=None, train_data=batches, device=device,
               precision=resolve_precision(s.amp, device), total_steps=s.steps, grad_accum=s.grad_accum,
               max_grad_norm=s.max_grad_norm, progress=lambda state, loss: _stamp(stamps, s.device))
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return Segment(times[s.warmup:])


class _Rows(torch.utils.data.Dataset):
    """The same batches as rows, for the Trainer's DataLoader (which adds the batch dimension)."""

    def __init__(self, batches: list[dict]) -> None:
        self.rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(b["input_ids"].shape[0])]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _trainer_turn(work: Workload, batches: list[dict], s: Settings, folder: Path) -> Segment:
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            _stamp(stamps, s.device)

    args = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, max_steps=s.steps, learning_rate=s.lr,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=s.max_grad_norm, optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=s.device == "cpu", bf16=s.amp == "bf16", fp16=s.amp == "fp16",
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=work.model, args=args, train_dataset=_Rows(batches),
                      data_collator=default_data_collator, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would break the table
    trainer.train()
    times = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    return Segment(times[s.warmup:])


@dataclass
class ThroughputResult:
    workload: str
    description: str
    settings: Settings
    tokens_per_step: int
    samples: dict[str, Samples]


def run_throughput(workload: str = "gpt2-small", settings: Settings | None = None, *, repeats: int = 3,
                   threads: int = 1, rank: int = 16, dtype: torch.dtype | None = None,
                   log: Callable[[str], None] | None = None) -> ThroughputResult:
    """Both trainers on ``workload`` (its frozen base in ``dtype``), interleaved ``repeats`` times."""
    s = settings or Settings()
    if s.steps <= s.warmup:
        raise ValueError(f"steps ({s.steps}) must exceed warmup ({s.warmup}) to measure anything")
    torch.set_num_threads(threads)
    ours = build_workload(workload, lora="lorascope", rank=rank, seq_len=s.seq_len, device=s.device, dtype=dtype)
    peft = build_workload(workload, lora="peft", rank=rank, seq_len=s.seq_len, device=s.device, dtype=dtype)
    batches = random_batches(s.micro_batches, ours.seq_len, ours.vocab_size, batch_size=s.batch_size)
    tokens_per_step = s.batch_size * ours.seq_len * s.grad_accum
    with tempfile.TemporaryDirectory(prefix="lorascope-throughput-") as tmp:
        samples = interleave({
            "lorascope": lambda: _lorascope_turn(ours, batches, s),
            "peft+Trainer": lambda: _trainer_turn(peft, batches, s, Path(tmp)),
        }, repeats, log=log)
    return ThroughputResult(workload, ours.description, s, tokens_per_step, samples)


def throughput_rows(result: ThroughputResult) -> list[dict]:
    trainer = result.samples["peft+Trainer"]
    base = trainer.median_step
    rows = []
    for name, s in result.samples.items():
        # speed is the inverse of step time: Trainer's step over ours
        paired, low, high = paired_ratio(trainer, s)
        rows.append({
            "model": result.workload,
            "trainer": name,
            "median step": f"{s.median_step:.3f} s",
            "tokens/s": f"{result.tokens_per_step / s.median_step:.0f}",
            "speed vs Trainer": f"{ratio(base, s.median_step):.3f}",
            "paired [min, max]": f"{paired:.3f} [{low:.2f}, {high:.2f}]",
            "steps timed": str(len(s.step_seconds)),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="both models, 8 steps × 5 repetitions")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    models = args.models or (["gpt2-small", "smollm2-135m"] if args.full else ["gpt2-small"])
    settings = Settings(steps=args.steps or (8 if args.full else 4), grad_accum=args.grad_accum,
                        batch_size=args.batch, seq_len=args.seq, device=args.device, amp=args.amp)
    repeats = args.repeats or (5 if args.full else 3)
    usable, missing = available_workloads(models)
    for name in missing:
        print(f"{name}: skipped (its converted cache does not exist; run `lorascope record` once)")
    rows = []
    for name in usable:
        print(f"{name}: {settings.steps} steps × accumulation {settings.grad_accum} per turn, {repeats} repetitions",
              flush=True)
        rows += throughput_rows(run_throughput(name, settings, repeats=repeats, threads=args.threads,
                                               log=lambda line: print(line, flush=True)))
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
