"""`lorascope record`: train with LoRA and record A and B into an HDF5 file."""
from __future__ import annotations

import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lorascope.cli.app import app
from lorascope.config import RunConfig, apply_overrides
from lorascope.errors import UsageError
from lorascope.lora import INITS
from lorascope.train.optim import OPTIMIZERS, SCHEDULES
from lorascope.runs.sweep import load_sweep_file

__all__ = ["record", "build_config"]


def choices(kind: str, names: list[str]) -> type[Enum]:
    """A str Enum of a registry's names: Typer lists them in --help and refuses anything else."""
    return Enum(kind, {name: name for name in names}, type=str)


Optimizer = choices("Optimizer", OPTIMIZERS.names())
Schedule = choices("Schedule", SCHEDULES.names())
Init = choices("Init", INITS.names())
Amp = choices("Amp", ["auto", "off", "fp16", "bf16"])


def build_config(base: RunConfig, overrides: dict[str, Any], settings: list[str]) -> RunConfig:
    """The base config (a file's, or the embedded default), then --set key=value pairs, then flags."""
    cfg = base
    pairs: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes key=value, such as --set optim.weight_decay=0.1 (got {item!r})")
        pairs[key.strip()] = value.strip()
    pairs.update({k: v for k, v in overrides.items() if v is not None})
    return apply_overrides(cfg, pairs) if pairs else cfg


@app.command()
def record(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A TOML or JSON run config (see examples/).", dir_okay=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Recording path [default: recordings/<run name>.h5].", dir_okay=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name [default: derived from the config].")] = None,
    model: Annotated[Optional[str], typer.Option(help="smollm2-135m (embedded default), minilm-l6, tiny-gpt2, tiny-llama, tiny-bert, a HF name or a local dir.")] = None,
    data: Annotated[Optional[str], typer.Option(help="news (embedded), rotten_tomatoes (embedded), a .json/.jsonl/.csv/.parquet file, or a datasets hub name.")] = None,
    task: Annotated[Optional[str], typer.Option(help="instruction, causal_lm or classification.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps to train.")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank r.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (scaling = alpha / rank).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(help="Optimizer.")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help="Learning-rate schedule.")] = None,
    init: Annotated[Optional[Init], typer.Option(help="How A and B are initialised.")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Comma-separated roles (attn, mlp, q, k, v, o, ...) or module-name globs.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Blocks to adapt: a slice such as -2: or : , or a list such as 0,3,5.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Micro-batch size.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same config + seed = same recording on CPU).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    amp: Annotated[Optional[Amp], typer.Option(help="Mixed precision: fp16 (autocast + GradScaler) or bf16 autocast, on CPU or CUDA; auto picks bf16 (fp16 without bf16 support) on CUDA and off (fp32) on CPU, where autocast is slower.")] = None,
    record_every: Annotated[Optional[int], typer.Option(help="Snapshot A and B every N optimizer steps.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any config field, dotted: --set optim.weight_decay=0.1 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run at --output from its checkpoint, appending to its recording.")] = False,
) -> None:
    """Train with LoRA and record A and B after every optimizer step into an HDF5 file.

    With no options it fine-tunes the embedded default (SmolLM2-135M on news headlines, the last two
    blocks' attention and MLP projections) for a few minutes on CPU.
    """
    from lorascope.runs.session import run

    flags = {
        "output": str(output) if output else None, "name": name, "model.name": model, "data.source": data,
        "data.task": task, "optim.steps": steps, "lora.rank": rank, "lora.alpha": alpha, "optim.lr": lr,
        "optim.optimizer": optimizer, "optim.schedule": schedule, "lora.init": init, "lora.targets": targets,
        "lora.layers": layers, "data.batch_size": batch_size, "optim.grad_accum": grad_accum, "seed": seed,
        "device": device, "amp": amp, "record.every": record_every,
    }
    flags = {k: v.value if isinstance(v, Enum) else v for k, v in flags.items()}
    base = RunConfig()
    if config is not None:
        base, axes = load_sweep_file(config)
        if axes:  # a sweep file's base run, e.g. 004's head-only baseline beside its LoRA grid
            typer.echo(f"{config} has a [sweep] table; recording its base run only "
                       f"(`lorascope sweep -c {config}` runs the grid)", err=True)
    cfg = build_config(base, flags, set_ or [])
    summary = run(cfg, resume=resume, log=lambda line: typer.echo(line, err=True))

    state = "interrupted at" if summary.interrupted else "finished"
    typer.echo(f"{state} step {summary.steps} in {summary.wall_time:.1f} s, final loss {summary.final_loss:.4f}")
    for key, value in summary.eval.items():
        typer.echo(f"  eval {key}: {value:.4f}")
    for reference, generated in summary.samples:
        typer.echo(f"  sample  reference: {reference.strip()[:100]}")
        typer.echo(f"          generated: {generated.strip()[:100]}")
    if summary.recording_bytes:
        typer.echo(f"recording: {summary.recording} ({summary.recording_bytes / 2**20:.1f} MiB)")
    typer.echo(f"adapters:  {summary.adapters}")
    if summary.recording_bytes:
        typer.echo(f"next: lorascope report {summary.recording}")
    if summary.interrupted:
        # the shell's convention for a command stopped by a signal (130 for Ctrl-C, 143 for
        # SIGTERM): `lorascope record ... && lorascope report ...` does not go on with half a run
        raise typer.Exit(128 + (summary.stop_signal or signal.SIGINT))
