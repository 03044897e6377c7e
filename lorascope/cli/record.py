"""`lorascope record`: train with LoRA and record A and B into an HDF5 file.

Its help lists the registered models, data sources, tasks, optimizers, schedules and inits from
the registries' declared names; training (torch, transformers) is imported when the command runs."""
# No `from __future__ import annotations` here: Typer would evaluate every option's annotation
# string again when the command is built (about 20 ms of each `--help`).

import shlex
import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorascope.cli.app import app
from lorascope.cli.choices import choices, described
from lorascope.config import AMP_MODES, RunConfig, build_config
from lorascope.data import LOCAL_FORMATS, SOURCES, TASKS
from lorascope.lora import INITS, ROLES
from lorascope.models import MODELS
from lorascope.train import OPTIMIZERS, SCHEDULES

__all__ = ["record"]

Optimizer = choices("Optimizer", OPTIMIZERS.names())
Schedule = choices("Schedule", SCHEDULES.names())
Init = choices("Init", INITS.names())
Task = choices("Task", TASKS.names())
Amp = choices("Amp", AMP_MODES)

MODEL_HELP = described("A registered model:", MODELS,
                       "or a .gguf file, a folder written by save_pretrained, or a Hugging Face name.")
DATA_HELP = described("An embedded data source:", SOURCES,
                      f"or a {'/'.join(LOCAL_FORMATS)} file, or a datasets hub name ('name' or 'name:config').")
TARGETS_HELP = f"Comma-separated roles ({', '.join(ROLES)}) or module-name globs such as '*.c_fc'."


@app.command()
def record(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A TOML or JSON run config (see examples/); a sweep file's base run.", dir_okay=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Recording path [default: recordings/<run name>.h5].", dir_okay=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name [default: derived from the config].")] = None,
    model: Annotated[Optional[str], typer.Option(help=MODEL_HELP, metavar="NAME")] = None,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP, metavar="SOURCE")] = None,
    task: Annotated[Optional[Task], typer.Option(help=described("What the model learns from the data:", TASKS), show_choices=False, metavar="NAME")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps to train.")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank r.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (scaling = alpha / rank).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(help=described("Optimizer:", OPTIMIZERS), show_choices=False, metavar="NAME")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help=described("Learning-rate schedule:", SCHEDULES), show_choices=False, metavar="NAME")] = None,
    init: Annotated[Optional[Init], typer.Option(help=described("How A and B are initialised:", INITS), show_choices=False, metavar="NAME")] = None,
    targets: Annotated[Optional[str], typer.Option(help=TARGETS_HELP)] = None,
    layers: Annotated[Optional[str], typer.Option(help="Blocks to adapt: a slice such as -2: or : , or a list such as 0,3,5.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Micro-batch size.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same config + seed = same recording on CPU).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    amp: Annotated[Optional[Amp], typer.Option(help="Mixed precision: fp16 (autocast + GradScaler) or bf16 autocast, on CPU or CUDA; auto picks bf16 (fp16 without bf16 support) on CUDA and off (fp32) on CPU, where autocast is slower.", show_choices=False, metavar="MODE")] = None,
    record_every: Annotated[Optional[int], typer.Option(help="Snapshot A and B every N optimizer steps.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any config field, dotted: --set optim.weight_decay=0.1 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run at --output from its checkpoint, appending to its recording.")] = False,
) -> None:
    """Train with LoRA and record A and B after every optimizer step into an HDF5 file.

    With no options it fine-tunes the embedded default (SmolLM2-135M on news headlines, the last two
    blocks' attention and MLP projections) for a few minutes on CPU.
    """
    from lorascope.runs.session import run
    from lorascope.runs.sweep import load_sweep_file

    flags = {
        "output": str(output) if output else None, "name": name, "model.name": model, "data.source": data,
        "data.task": task, "optim.steps": steps, "lora.rank": rank, "lora.alpha": alpha, "optim.lr": lr,
        "optim.optimizer": optimizer, "optim.schedule": schedule, "lora.init": init, "lora.targets": targets,
        "lora.layers": layers, "data.batch_size": batch_size, "optim.grad_accum": grad_accum, "seed": seed,
        "device": device, "amp": amp, "record.every": record_every,
    }
    base = RunConfig()
    if config is not None:
        base, axes = load_sweep_file(config)
        if axes:  # a sweep file's base run, such as a head-only baseline beside its LoRA grid
            typer.echo(f"{config} has a [sweep] table; recording its base run only "
                       f"(`lorascope sweep -c {config}` runs the grid)", err=True)
    cfg = build_config(base, set_ or [], {k: v.value if isinstance(v, Enum) else v for k, v in flags.items()})
    summary = run(cfg, resume=resume, log=lambda line: typer.echo(line, err=True))

    if summary.speaks:
        _print_outcome(summary)
    if summary.interrupted:
        # the shell's convention for a command stopped by a signal (130 for Ctrl-C, 143 for
        # SIGTERM): `lorascope record ... && lorascope report ...` does not go on with half a run
        raise typer.Exit(128 + (summary.stop_signal or signal.SIGINT))


def _print_outcome(summary) -> None:
    state = "interrupted at" if summary.interrupted else "finished"
    typer.echo(f"{state} step {summary.steps} in {summary.wall_time:.1f} s, final loss {summary.final_loss:.4f}")
    for key, value in summary.eval.items():
        typer.echo(f"  eval {key}: {value:.0f}" if key == "examples" else f"  eval {key}: {value:.4f}")
    for reference, generated in summary.samples:
        typer.echo(f"  sample  reference: {reference.strip()[:100]}")
        typer.echo(f"          generated: {generated.strip()[:100]}")
    if summary.recording_bytes:
        typer.echo(f"recording: {summary.recording} ({summary.recording_bytes / 2**20:.1f} MiB)")
    typer.echo(f"adapters:  {summary.adapters}")
    if summary.recording_bytes:
        typer.echo(f"next: lorascope report {shlex.quote(str(summary.recording))}")  # pasteable as it is
