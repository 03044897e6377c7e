"""One recorded training run, from a RunConfig to a recording: build the model, the adapters, the
data, the optimizer and the Recorder, run the loop, evaluate, save the adapters, close the file.

This is the composition root: the only module that knows every other training-side module."""
from __future__ import annotations

import io
import json
import platform
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lorascope
from lorascope.train.amp import resolve_device, resolve_precision
from lorascope.config import RunConfig, config_to_dict
from lorascope.train.distributed import (
    PARALLEL, full_trainable_state, init_distributed, shard_batches, shutdown, wrap_model,
)
from lorascope.errors import LorascopeError, UsageError
from lorascope.outputs import OutputLock, side_files
from lorascope.runs.resume import check_resume
from lorascope.train.evaluate import evaluate, generate_samples
from lorascope.progress import StepProgress
from lorascope.train.loop import LoopState, StopOnSignal, train_loop

__all__ = ["RunSummary", "run", "environment"]


@dataclass
class RunSummary:
    recording: Path
    adapters: Path
    steps: int
    interrupted: bool
    final_loss: float
    eval: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (reference, generated)
    wall_time: float = 0.0
    recording_bytes: int = 0
    stop_signal: int | None = None  # the signal that stopped an interrupted run (SIGINT, SIGTERM, SIGHUP)
    speaks: bool = True  # rank 0 (or the only process): the one that prints the run's outcome


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment(device: torch.device, precision_mode: str, world_size: int = 1, model: torch.nn.Module | None = None) -> dict:
    import transformers

    from lorascope.lora import count_parameters

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lorascope": lorascope.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "amp": precision_mode,
        "world_size": world_size,
    }
    if model is not None:
        counts = count_parameters(model)
        env.update(total_parameters=counts["total"], trainable_parameters=counts["trainable"])
    return env


def _check_folder(path: Path) -> None:
    """Refuse before training starts what would only fail after it: an unwritable folder."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {folder}: {exc.strerror}; choose another path with -o") from None
    probe = folder / f".lorascope-write-test-{id(path)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write into {folder}: {exc.strerror}; choose another path with -o") from None


def _check_existing(path: Path, resume: bool) -> None:
    """Asked while the output's lock is held, so that no other run can create it meanwhile."""
    if path.exists() and not resume:
        raise UsageError(f"{path} already exists; pass --resume to continue it, or choose another path with -o")


def _check_space(path: Path, needed: int) -> None:
    """Refuses a recording that cannot fit in the free space of its folder, before training
    starts: hours into a run is the worst time to find the disk full."""
    folder = path.parent if str(path.parent) else Path(".")
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UsageError(
            f"the recording needs about {needed / 2**20:.1f} MiB but {folder} has {free / 2**20:.1f} MiB free; "
            "free some space, record less often (--record-every), or choose another path with -o"
        )


def run(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> RunSummary:
    """Trains and records one run. The output and its side files are this process's from the
    first check to the last save (``OutputLock``): a second run with the same output is refused
    with a sentence instead of both writing one file. A signal (INT, TERM, HUP) at any moment of
    the run, setup and saving included, ends it the same way: at the next boundary, with the
    recording closed as ``interrupted`` and the checkpoint that ``--resume`` needs."""
    from lorascope.train.optim import validate_optim

    validate_optim(cfg.optim)  # pairing mistakes fail before the model loads
    output = cfg.output_path()
    stop = StopOnSignal()
    with stop:
        dist_info, device = init_distributed(resolve_device(cfg.device))
        if not dist_info.is_main:  # one writer, one voice in the terminal: rank 0's
            return _run(cfg, output, dist_info, device, resume, lambda line: None, stop)
        _check_folder(output)
        with OutputLock(output):
            _check_existing(output, resume)
            finished = False
            if resume:  # every refusal before anything is written: a refused resume changes no byte
                finished = check_resume(cfg, output) == "complete"
            return _run(cfg, output, dist_info, device, resume, log, stop, finished)


def _run(cfg: RunConfig, output: Path, dist_info, device: torch.device, resume: bool,
         log: Callable[[str], None], stop: StopOnSignal, finished: bool = False) -> RunSummary:
    from lorascope.data import build_data
    from lorascope.lora import add_lora, load_adapters, save_adapters
    from lorascope.train.model_report import model_report
    from lorascope.models import load_model
    from lorascope.train.optim import build_optimizer, build_schedule, current_lrs
    from lorascope.record import Recorder

    side = side_files(output)
    adapters_path, state_path = side.adapters, side.state
    # FSDP2 turns the parameters into shards: every rank then records (joining the gathers),
    # and reading the adapters whole is a collective
    parallel = PARALLEL.get(cfg.parallel)  # an unknown name fails here, listing the known ones
    sharded = dist_info.enabled and parallel.shards_parameters
    if sharded and resume:
        raise UsageError(f"--resume is not supported with parallel = {cfg.parallel}; start a new run")
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.amp, device)

    log(f"loading model {cfg.model.name} ...")
    model, tokenizer = load_model(cfg.model, task=cfg.data.task, num_labels=cfg.data.num_labels)
    heads = {}
    if cfg.head_only:
        _train_head_only(model)
    else:
        add_lora(model, cfg.lora)
        heads = _train_new_head(model, cfg)
    model.to(device)
    if sharded:  # before the optimizer is built: it must hold the sharded parameters
        model = wrap_model(model, dist_info, device, cfg.parallel)
    data = build_data(cfg.data, tokenizer, seed=cfg.seed, task=cfg.data.task)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_schedule(optimizer, cfg.optim, cfg.optim.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    log(model_report(model, optimizer, model_name=cfg.model.name).format())
    log("data: " + ", ".join(f"{k} {v}" for k, v in data.summary().items() if v not in (None, [], "")))

    state = LoopState()
    if resume:
        state = _restore(adapters_path, state_path, model, optimizer, scheduler, scaler, load_adapters)
        log(f"resuming {output} at step {state.step}")
        # a run stopped after its last step (in the final evaluation, say) resumes to finish it
        if state.step > cfg.optim.steps or (state.step == cfg.optim.steps and (finished or not output.exists())):
            raise UsageError(f"{output} already reached step {state.step} of {cfg.optim.steps}; raise --steps to train further")
    first_step = state.step
    train_model = model if sharded else wrap_model(model, dist_info, device, cfg.parallel)

    recorder = None
    if cfg.head_only:
        log("head-only run: there is no LoRA to record; the adapters file keeps the trained head")
    elif dist_info.is_main or sharded:  # rank 0 records; under FSDP the other ranks join its gathers
        recorder = Recorder(
            output, model, config=cfg.record, run_name=cfg.run_name(), run_config=config_to_dict(cfg),
            environment=environment(device, precision.mode, dist_info.world_size, model),
            total_steps=cfg.optim.steps, resume=resume, heads=heads,
        )
        if dist_info.is_main:
            planned = recorder.estimate_bytes(cfg.optim.grad_accum)
            # resuming writes a fresh copy of the old file beside it before replacing it
            _check_space(output, planned + (output.stat().st_size if resume and output.exists() else 0))
            log(f"recording {len(recorder.modules)} modules to {output} (about {planned / 2**20:.1f} MiB)")

    status = "failed"
    result = None
    final_eval: dict[str, float] = {}
    samples: list[tuple[str, str]] = []
    wants_samples = cfg.data.task != "classification" and cfg.generate_samples > 0
    try:
        if recorder is not None:
            recorder.start(optimizer=optimizer, step=state.step)
        with StepProgress(cfg.optim.steps, start=state.step) as progress:
            # a signal during setup stops the loop before its first step
            result = train_loop(
                model=train_model, optimizer=optimizer, scheduler=scheduler,
                train_data=shard_batches(data.train, dist_info), device=device, precision=precision,
                total_steps=cfg.optim.steps, grad_accum=cfg.optim.grad_accum,
                max_grad_norm=cfg.optim.max_grad_norm, hooks=recorder,
                lrs=lambda: current_lrs(optimizer, scheduler), eval_data=data.val,
                eval_every=cfg.eval_every, eval_batches=cfg.eval_batches, task=cfg.data.task,
                state=state, scaler=scaler, progress=progress.update if dist_info.is_main else None, stop=stop,
            )
        if not stop.requested:  # after a signal the user wants out, not another evaluation
            final_eval = evaluate(model, data.val, device, precision, cfg.data.task,
                                  max_batches=cfg.eval_batches, stop=lambda: stop.requested)
        if final_eval and recorder is not None:
            recorder.log_eval(result.state.step, final_eval)
        # stopped in the final evaluation: every step is in, but the run did not finish
        result.interrupted = result.interrupted or (stop.requested and not final_eval)
        if sharded and wants_samples and not result.interrupted:
            # every rank generates alike, while the process group is up: each forward gathers
            # weights from all of them
            samples = _samples(model, tokenizer, data, cfg.generate_samples, device, keep=dist_info.is_main)
        status = "interrupted" if result.interrupted else "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        with stop.protect():  # a signal now waits for the file and the checkpoint to be whole
            saves = None
            # a sharded model's adapters are gathered on every rank first; not after a failure,
            # when a rank may be gone and the gather would wait for it
            whole = full_trainable_state(model) if sharded and status != "failed" else None
            # a resume that took no step (refused as the file opened, or stopped in setup) keeps
            # the checkpoint it started from: it still matches the recording
            if dist_info.is_main and (whole is not None or not sharded) and (state.step > first_step or not resume):
                # a sharded run cannot resume: no trainer state is kept, and none of an older run
                save_state = ((lambda: state_path.unlink(missing_ok=True)) if sharded else
                              (lambda: _save_state(state_path, state, optimizer, scheduler, scaler)))
                saves = (lambda: _save_adapters(model, adapters_path, save_adapters, whole), save_state, state_path)
            failure = _close_and_save(recorder, status, saves)
            shutdown(dist_info)
    if failure is not None:  # reached only when nothing else is on its way out
        raise failure

    if not sharded and wants_samples and not result.interrupted and not stop.requested and dist_info.is_main:
        samples = _samples(model, tokenizer, data, cfg.generate_samples, device, keep=True)
    return RunSummary(
        recording=output, adapters=adapters_path, steps=result.state.step, interrupted=result.interrupted,
        final_loss=result.losses[-1] if result.losses else float("nan"), eval=final_eval, samples=samples,
        wall_time=result.wall_time, recording_bytes=output.stat().st_size if output.exists() else 0,
        stop_signal=stop.signum if result.interrupted else None, speaks=dist_info.is_main,
    )


def _samples(model, tokenizer, data, n: int, device: torch.device, keep: bool) -> list[tuple[str, str]]:
    """``n`` (reference, generated) pairs from validation prompts; [] unless ``keep``."""
    pairs = data.sample_pairs(n)
    generated = generate_samples(model, tokenizer, [prompt for prompt, _ in pairs], device)
    return [(reference, text) for (_, reference), text in zip(pairs, generated)] if keep else []


def _close_and_save(recorder, status: str, saves) -> LorascopeError | None:
    """Closes the recording and saves the checkpoint (``saves``: save the adapters, save the
    state, the state's path), each whatever happened to the other: a recording that could not be
    finished (a full disk) must not also cost the trained adapters. But then the recording may
    end before the adapters' step, and resuming would leave a hole in it, so the state that
    --resume needs is not saved (and an older one is removed: it does not match the adapters);
    likewise when the adapters were saved and the state could not be. Adapters that could not
    be saved leave the previous pair of adapters and state as it was (it still matches).
    Returns the first error rather than raising it, so that an exception already on its way out
    of the run is the one the user sees."""
    failure: LorascopeError | None = None
    if recorder is not None:
        try:
            recorder.close(status=status)
        except LorascopeError as exc:
            failure = exc
    if saves is None:
        return failure
    save_adapters, save_state, state_path = saves
    try:
        save_adapters()
    except LorascopeError as exc:
        return failure or exc
    try:
        if failure is None:
            save_state()
            return None
    except LorascopeError as exc:
        failure = exc
    state_path.unlink(missing_ok=True)
    return failure


def _write_atomically(path: Path, write: Callable[[Path], None], what: str) -> None:
    """``write(tmp)`` then a rename onto ``path``: a kill or a full disk during the save keeps
    the previous file. Whatever the writer raises when the disk is full (an OSError, torch's
    RuntimeError, safetensors' SafetensorError) becomes one sentence with the free space."""
    from safetensors import SafetensorError

    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except (OSError, RuntimeError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:200]
        raise LorascopeError(
            f"saving the {what} {path} failed ({reason}; {_free_space(path.parent)}); free disk space "
            "or choose another path with -o"
        ) from None


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder if str(folder) else Path('.')).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def _save_adapters(model: torch.nn.Module, path: Path, save_adapters, values: dict | None = None) -> None:
    _write_atomically(path, lambda tmp: save_adapters(model, tmp, values), "adapters")


def _train_head_only(model: torch.nn.Module) -> None:
    """004's baseline: freeze everything but the classification head."""
    from lorascope.models import head_modules

    heads = head_modules(model)  # refuses a model without a classification head
    for p in model.parameters():
        p.requires_grad_(False)
    for module in heads.values():
        for p in module.parameters():
            p.requires_grad_(True)


def _train_new_head(model: torch.nn.Module, cfg: RunConfig) -> dict[str, torch.nn.Module]:
    """Classification with LoRA: the task's freshly initialised head trains beside the adapters
    (PEFT's modules_to_save for SEQ_CLS; the pretrained pooler stays frozen), in the optimizer's
    "other" group at the run's lr, unless lora.train_head is off. Returns the heads that train,
    for the Recorder to follow; none for other tasks, which have no new head."""
    from lorascope.models import head_modules

    if cfg.data.task != "classification" or not cfg.lora.train_head:
        return {}
    heads = head_modules(model, pooler=False)
    for module in heads.values():
        for p in module.parameters():
            p.requires_grad_(True)
    return heads


def _save_state(path: Path, state: LoopState, optimizer, scheduler, scaler) -> None:
    payload = {
        "loop": json.dumps(state.__dict__),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()  # written as plain bytes: a full disk is then an OSError that says so
    torch.save(payload, buffer)
    _write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()), "resume state")


def _restore(adapters_path, state_path, model, optimizer, scheduler, scaler, load_adapters) -> LoopState:
    if not adapters_path.exists() or not state_path.exists():
        raise UsageError(
            f"cannot resume: {adapters_path.name} and {state_path.name} must sit beside the recording; "
            "start a new run instead"
        )
    load_adapters(model, adapters_path)
    try:
        # data only, never code: a state file that carries anything else (a pickled callable,
        # a truncated or foreign file) fails here, before any of it is used
        payload = torch.load(state_path, weights_only=True)
        loop = LoopState(**json.loads(payload["loop"]))
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload["scheduler"]:
            scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["torch_rng"])
    except Exception as exc:  # whatever the file holds, the answer for the user is the same
        raise UsageError(
            f"cannot resume: {state_path.name} is not a checkpoint this run wrote ({type(exc).__name__}); "
            "start a new run instead"
        ) from None
    return loop
