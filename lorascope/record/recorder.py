"""The Recorder: attaches to any training loop through a few hook calls, captures A and B (and
optionally gradients, optimizer state and W0) on the training thread into preallocated host
buffers, and leaves the HDF5 writing to a background thread.

    with Recorder("run.h5", model, RecordConfig(every=1)) as rec:
        rec.start(optimizer)
        for step in range(1, steps + 1):
            ...; loss.backward(); rec.on_micro_step(micro); ...
            optimizer.step()
            rec.on_optimizer_step(step, {"loss": loss.item()}, optimizer)
"""
from __future__ import annotations

import atexit
import datetime as dt
import math
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.errors import RecordingError, UsageError
from lorascope.record.capture import TORCH_DTYPES, Channel
from lorascope.lora.pairs import LoraPair, discover, require_pairs, select_pairs, warn_not_recorded
from lorascope.record.estimate import SizeEstimate, estimate_size
from lorascope.record.gather import gather_for, is_sharded
from lorascope.record.sharded_norms import NormsOnShards
from lorascope.h5.format import STANDARD_SCALARS, STORAGE_DTYPES, format_version
from lorascope.h5.resume import replace, resume_seed, temporary_path
from lorascope.record.heads import HeadNorms
from lorascope.record.messages import Commit, Scalars
from lorascope.record.schedule import build_schedule
from lorascope.record.updates import norm_place
from lorascope.h5.file import FileLayout, ModuleSpec, RecordingFile
from lorascope.record.writer import WriterThread

__all__ = ["Recorder", "NullRecorder", "process_rank", "default_environment", "group_lrs",
           "lr_names"]


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def default_environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    for package in ("transformers", "peft"):
        if package in sys.modules:  # only what the run uses; importing costs seconds
            env[package] = getattr(sys.modules[package], "__version__", "")
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def lr_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The learning-rate scalars of an optimizer: "lr" (its first group) and, with several groups,
    one "lr_<name>" per group, named by the group's "name" key as lorascope's loop names them
    (lr_A, lr_B, lr_other), else by its index."""
    groups = optimizer.param_groups
    return ["lr"] + ([f"lr_{g.get('name', i)}" for i, g in enumerate(groups)] if len(groups) > 1 else [])


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The ``lr_names`` with the lr each group holds now; a group without a numeric lr
    (relative-step Adafactor computes its own) is left out."""
    groups = optimizer.param_groups
    values = [groups[0].get("lr")] + ([g.get("lr") for g in groups] if len(groups) > 1 else [])
    return {name: float(v) for name, v in zip(lr_names(optimizer), values)
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _check_options(cfg: RecordConfig) -> None:
    if cfg.dtype not in STORAGE_DTYPES:
        raise UsageError(f"record.dtype must be one of {', '.join(STORAGE_DTYPES)} (got {cfg.dtype!r})")
    if cfg.compression not in ("none", "lzf", "gzip"):
        raise UsageError(f"record.compression must be none, lzf or gzip (got {cfg.compression!r})")
    if cfg.queue_size < 2:
        raise UsageError(f"record.queue_size must be at least 2 (got {cfg.queue_size})")


def _check_writable(path: Path) -> None:
    """Refuses an output path that cannot be written, before any training time is spent."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"the output path {path} is a folder; give a file name such as {path / 'run.h5'}")
    if not parent.is_dir():
        raise UsageError(f"the folder {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied; choose a writable output path")


class Recorder:
    """Records the LoRA pairs of ``model`` into ``path``. Under torchrun, ranks other than 0 get
    a ``NullRecorder`` that accepts the same calls and writes nothing, unless the model is
    sharded (FSDP, ZeRO-3): then every rank needs a Recorder, whose calls join the gathers of
    the recorded tensors (see ``gather``), and only rank 0 writes."""

    def __new__(cls, *args: Any, **kwargs: Any):
        model = args[1] if len(args) > 1 else kwargs.get("model")
        if process_rank() != 0 and not is_sharded(model):
            return NullRecorder()
        return super().__new__(cls)

    def __init__(self, path: str | Path, model: torch.nn.Module, config: RecordConfig | None = None,
                 *, run_name: str = "", run_config: dict | None = None,
                 heads: Mapping[str, torch.nn.Module] | None = None,
                 environment: dict | None = None, total_steps: int | None = None,
                 resume: bool = False, update_norms: str = "auto", overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        if self.path.exists() and not self.path.is_dir() and not (resume or overwrite):
            # a recording is hours of training: replacing one must be asked for by name
            raise UsageError(f"{self.path} already exists; pass overwrite=True to replace it, resume=True "
                             "to continue it, or choose another path")
        self.config = cfg = config or RecordConfig()
        _check_options(cfg)
        # --- sharding: how the recorded tensors are read whole (gather.py); a no-op unsharded
        self._gather = gather_for(model)
        if resume and self._gather.sharded:
            raise UsageError("resuming the recording of a sharded model is not supported; start a new recording")
        with self._gather.discovery():
            found = discover(model)
        self.pairs: dict[str, LoraPair] = select_pairs(require_pairs(found), cfg.modules)
        self._gather.bind(self.pairs)
        self.not_recorded, self.peft = found.not_recorded, found.peft
        warn_not_recorded(self.not_recorded)
        self.schedule = build_schedule(cfg, total_steps)
        self.total_steps = total_steps
        self.run_name = run_name or self.path.stem
        self.run_config = run_config or {}
        self.device = next(iter(self.pairs.values())).A.device
        self.environment = environment or default_environment(self.device)
        # where the always-on update norms are computed: a strategy (see updates.py); a sharded
        # model's from each rank's shards, summed once per snapshot (sharded_norms.py)
        self._norms = norm_place(update_norms, self.device)
        if self._gather.sharded:
            self._norms = NormsOnShards(self._gather)
        self.update_norms = self._norms.name
        # A0, B0, A1, B1, ...: the order of every flat buffer
        self._params = [t for p in self.pairs.values() for t in (p.A, p.B)]
        # how each parameter-shaped tensor becomes its recorded matrix (None: it is one already)
        self._as_matrix = [p.matrix for p in self.pairs.values() for _ in (p.A, p.B)]
        self._dora = [p for p in self.pairs.values() if p.magnitude is not None]
        # heads (module name → module, e.g. lorascope.models.head_modules(model)): modules trained
        # beside the pairs, followed by their parameters' norms at every step, as scalars
        self._heads = HeadNorms(heads) if heads else None
        self._writer: WriterThread | None = None
        self._opened = False  # the file's layout is settled (on ranks that do not write, too)
        self._early: list[Any] = []  # messages captured before the file exists
        self._held: list[Any] | None = None  # messages of the optimizer step being captured
        self._optimizer = None
        self._hooks: list[Any] = []
        self._step = 0
        self._micro = -1  # unknown until on_micro_step is called
        self._last_snapshot = -1
        self._started = self._closed = False
        self._t0 = 0.0

    @property
    def modules(self) -> dict[str, LoraPair]:
        """The recorded LoRA pairs by module name, in model order."""
        return self.pairs

    # --- sizes ---------------------------------------------------------------------------------
    @staticmethod
    def estimate(model: torch.nn.Module, config: RecordConfig, total_steps: int,
                 grad_accum: int = 1) -> SizeEstimate:
        """The size of a recording before a Recorder exists."""
        return estimate_size(model, config, total_steps, grad_accum)

    def size_estimate(self, grad_accum: int = 1) -> SizeEstimate:
        """This run's recording size: print it so nobody fills a disk by surprise."""
        if not self.total_steps:
            raise UsageError("the size estimate needs the planned steps: pass total_steps= to the Recorder")
        return estimate_size(self.pairs, self.config, self.total_steps, grad_accum)

    def estimate_bytes(self, grad_accum: int = 1) -> int:
        return self.size_estimate(grad_accum).total_bytes

    # --- the hook protocol --------------------------------------------------------------------
    def start(self, optimizer: torch.optim.Optimizer | None = None, step: int = 0) -> "Recorder":
        """Takes the step-0 snapshot (before any update) and, unless optimizer state must be
        probed first, creates the file. Resuming at optimizer step ``step`` keeps the old file's
        rows up to that step and continues after it."""
        if self._started:
            raise UsageError("Recorder.start() was already called; call it once, before training")
        writes = self._gather.writes  # False: a rank of a sharded run that only joins the gathers
        if writes:
            _check_writable(self.path)
        self._optimizer = optimizer
        cfg, slots = self.config, self.config.queue_size
        shapes = [s for p in self.pairs.values() for s in (p.a_shape, p.b_shape)]
        storage = TORCH_DTYPES[cfg.dtype]
        # a rank that only joins the gathers keeps no host buffers: it never holds a whole tensor
        self._weights = Channel(shapes, self._norms.weights_dtype(storage), self.device, slots) if writes else None
        self._norms.start(self._params, self._weights, slots, self._matrices)
        self._grads = Channel(shapes, storage, self.device, slots) if cfg.grads and writes else None
        self._magnitudes = (Channel([(math.prod(self._gather.shape(p.magnitude)),) for p in self._dora],
                                    torch.float32, self.device, slots) if self._dora and writes else None)
        self._grad_prev: list[torch.Tensor] = []  # the accumulated gradients last seen, whole
        self._grad_prev_zero = True
        self._state_keys: list[tuple[LoraPair, torch.Tensor, str]] = []
        self._state: Channel | None = None
        self._started = True
        self._t0 = time.perf_counter()
        self._step = int(step)
        if self.resume and self.path.exists():
            # the checkpoint's optimizer already holds its state: the layout is known now
            self._open_file(self._probe_state(optimizer) if cfg.optimizer_state else {},
                            resume_step=self._step)
            if self._last_snapshot < self._step:
                self._snapshot(self._step, norms="baseline")
            else:  # the file's last snapshot is this step: the norms' series starts without one
                self._send(self._norms.baseline(self._step, self._alive))
        else:
            self._snapshot(self._step, norms="baseline")
            if not cfg.optimizer_state:
                self._open_file({})
        if self._heads is not None:
            self._send(Scalars(self._step, self._heads.start(), optimizer_step=False))
        self.flush()  # step 0 is on disk before training starts
        atexit.register(self._close_at_exit)
        return self

    def queue_depth(self) -> int:
        """Messages waiting for the writer: stays small when the writer keeps up."""
        return self._writer.pending() if self._writer is not None else len(self._early)

    def flush(self, wait: bool = False) -> None:
        """Commits everything captured so far, whatever the flush interval; ``wait=True``
        returns once it is on disk."""
        self._require_started()
        if self._writer is None:
            return
        done = threading.Event() if wait else None
        self._writer.put(Commit(done))
        while done is not None and not done.wait(timeout=0.5):
            self._writer.raise_error()
            if not self._writer.alive():
                break

    def on_micro_step(self, micro_step: int, loss_scale: float = 1.0) -> None:
        """After each backward(). With record.grads, stores this micro-batch's own gradient:
        the growth of the accumulated .grad since the last call, divided by the loss scale."""
        self._require_started()
        self._micro = int(micro_step)
        if not self.config.grads or (self._step + 1) not in self.schedule:
            return
        with torch.no_grad():
            grads = self._gather.grads(self._params)
            if grads is None:  # a rank of a sharded run: it joined the gather, rank 0 records
                return
            if self._grad_prev_zero:
                own = [g.detach().clone() for g in grads]
            else:
                own = torch._foreach_sub(grads, self._grad_prev)
            if loss_scale != 1.0:
                torch._foreach_div_(own, float(loss_scale))
            if not self._grad_prev:
                self._grad_prev = [torch.empty_like(g) for g in grads]
            torch._foreach_copy_(self._grad_prev, grads)
            self._grad_prev_zero = False
            msg = self._grads.take("grads", self._step + 1, self._matrices(own), self._alive,
                                   micro_step=self._micro, loss_scale=float(loss_scale))
        self._send(msg)

    def on_optimizer_step(self, step: int, scalars: dict[str, float] | None = None,
                          optimizer: torch.optim.Optimizer | None = None) -> None:
        """After optimizer.step(): update norms and scalars always, weights on schedule."""
        self._require_started()
        # Every copy of this step is made before the writer hears of any: a message wakes the
        # writer, whose h5py calls hold the GIL, and a second copy would then wait for it.
        self._held = []
        try:
            self._optimizer_step(step, scalars, optimizer)
        except BaseException:
            self._held = None
            raise
        held, self._held = self._held, None
        for msg in held:
            self._send(msg)

    def _optimizer_step(self, step: int, scalars: dict[str, float] | None,
                        optimizer: torch.optim.Optimizer | None) -> None:
        optimizer = optimizer or self._optimizer
        self._optimizer = optimizer
        self._step = int(step)
        self._grad_prev_zero = True  # the next micro-step starts a new accumulation cycle
        scheduled = self._step in self.schedule
        self._send(self._norms.update(self._step, scheduled, self._alive))
        values = dict(scalars or {})
        if optimizer is not None:
            # read here only what the caller did not say: after a scheduler's step the optimizer
            # already holds the next step's lr, while the caller knows the one its update applied
            for name, lr in group_lrs(optimizer).items():
                values.setdefault(name, lr)
        if self._heads is not None:
            values.update(self._heads.step())
        self._send(Scalars(self._step, values))
        if not self._opened and not self._closed:
            self._open_file(self._probe_state(optimizer))
        if scheduled:
            self._snapshot(self._step, norms="update")
            if self.config.optimizer_state:
                self._capture_state(optimizer)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars that arrive apart from the optimizer step (a trainer's periodic log)."""
        self._require_started()
        self._send(Scalars(int(step), dict(scalars), optimizer_step=False))

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        named = {k if k.startswith("eval_") else f"eval_{k}": float(v) for k, v in metrics.items()}
        self.log_scalars(step, named)

    def attach(self, optimizer: torch.optim.Optimizer) -> "Recorder":
        """For a plain loop: calls on_optimizer_step after every optimizer.step() through the
        optimizer's post-step hook (removed on close). Do not also call on_optimizer_step. A
        GradScaler that skips a step skips the hook too, so the counts stay the optimizer's."""
        def hook(opt, args, kwargs) -> None:
            self.on_optimizer_step(self._step + 1, None, opt)

        self._hooks.append(optimizer.register_step_post_hook(hook))
        if not self._started:
            self.start(optimizer)
        return self

    def close(self, status: str = "complete") -> None:
        """Drains the queue, commits every captured snapshot and writes the final status."""
        if self._closed or not self._started:
            self._closed = True
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        atexit.unregister(self._close_at_exit)
        try:
            if status == "complete":  # norms a strategy still holds (sharded: since the last snapshot)
                self._send(self._norms.finish(self._alive))
            # the final weights matter most: keep them even when the schedule skipped them (a
            # sharded run gathers them whatever rank 0's writer does: the other ranks join)
            if (status == "complete" and self._step > self._last_snapshot
                    and (self._alive() or self._gather.sharded)):
                self._snapshot(self._step)
            # optimizer state was asked for but no step ever ran: the file is created now; but a
            # resume whose file never opened (refused) leaves the old recording as it was, and a
            # sharded run that failed writes no file (creating it gathers W0: a dead rank never joins)
            if (not self._opened and not (self.resume and self.path.exists())
                    and (status == "complete" or not self._gather.sharded)):
                self._open_file({})
        finally:
            self._closed = True
            if self._writer is not None:
                self._writer.close(status)
        if self._writer is not None:
            self._writer.raise_error()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close("complete")
        else:
            status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            try:
                self.close(status)
            except RecordingError:
                pass  # the original exception is the one to show
        return False

    # --- internals ---------------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._writer is None or self._writer.alive()

    def _require_started(self) -> None:
        if not self._started:
            raise UsageError("call Recorder.start(optimizer) before training, to record step 0")
        if self._closed:
            raise UsageError("the Recorder is closed; open a new one to record another run")

    def _send(self, msg: Any) -> None:
        if msg is None or not self._gather.writes:  # nothing to send, or a rank that does not write
            return
        if isinstance(msg, list):  # a strategy's several messages (sharded norms: one per step)
            for one in msg:
                self._send(one)
            return
        if self._held is not None:  # inside on_optimizer_step: sent when its copies are made
            self._held.append(msg)
        elif self._writer is None:
            self._early.append(msg)
        else:
            self._writer.put(msg)

    def _matrices(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Parameter-shaped tensors in pair order → the recorded matrices (views, no copies)."""
        return [t if f is None else f(t) for f, t in zip(self._as_matrix, tensors)]

    def _snapshot(self, step: int, norms: str = "") -> None:
        """Captures the weights; ``norms`` ("baseline"/"update") also makes this copy the
        writer's update-norm reference where that path is on."""
        self._last_snapshot = step
        magnitudes = self._gather.weights([p.magnitude for p in self._dora]) if self._dora else None
        weights = self._gather.weights(self._params)
        if weights is None:  # a rank of a sharded run: it joined the gathers, rank 0 records
            return
        if magnitudes is not None:  # sent first: the snapshot's commit then covers it
            with torch.no_grad():
                self._send(self._magnitudes.take("magnitudes", step, [m.reshape(-1) for m in magnitudes],
                                                 self._alive))
        msg = self._weights.take("weights", step, self._matrices(weights), self._alive,
                                 micro_step=self._micro, norms=self._norms.snapshot_role(norms))
        msg.time = time.perf_counter() - self._t0  # once the copy is made, as the file's times mean
        self._send(msg)

    def _probe_state(self, optimizer) -> dict[int, dict[str, list[tuple[str, tuple[int, ...]]]]]:
        """Which optimizer-state tensors exist for A and B. They only exist after the first
        step, and SWMR forbids adding datasets later, so the file waits for this."""
        if not self.config.optimizer_state:
            return {}
        if optimizer is None:
            raise UsageError(
                "record.optimizer_state needs the optimizer: pass it to Recorder.start(optimizer) "
                "or to on_optimizer_step(..., optimizer=optimizer)"
            )
        found = [(i, matrix, pair, param, key) for i, pair in enumerate(self.pairs.values())
                 for matrix, param in (("A", pair.A), ("B", pair.B))
                 for key in self._gather.state_keys(optimizer, param)]
        self._state_keys = [(pair, param, key) for _, _, pair, param, key in found]
        # the stored shapes, read from the whole tensors (once; a gather when sharded)
        whole = self._gather.state(optimizer, [(param, key) for _, _, _, param, key in found])
        layout: dict[int, dict[str, list[tuple[str, tuple[int, ...]]]]] = {i: {} for i in range(len(self.pairs))}
        for (i, matrix, pair, param, key), tensor in zip(found, whole or []):
            shape = tuple(_state_view(pair, self._gather.shape(param), tensor).shape)
            layout[i].setdefault(matrix, []).append((key, shape))
        shapes = [s for m in layout.values() for entries in m.values() for _, s in entries]
        self._state = (Channel(shapes, torch.float32, self.device, self.config.queue_size)
                       if shapes and self._gather.writes else None)
        return layout

    def _capture_state(self, optimizer) -> None:
        if not self._state_keys or optimizer is None:
            return
        try:
            whole = self._gather.state(optimizer, [(param, key) for _, param, key in self._state_keys])
        except KeyError as exc:
            raise RecordingError(
                f"the optimizer's state lost the entry {exc} it had after the first step; record "
                "this optimizer with record.optimizer_state off"
            ) from None
        if whole is None:  # a rank of a sharded run: it joined the gather, rank 0 records
            return
        tensors = [_state_view(pair, self._gather.shape(param), t)
                   for (pair, param, _), t in zip(self._state_keys, whole)]
        with torch.no_grad():
            self._send(self._state.take("state", self._step, tensors, self._alive))

    def _module_spec(self, index: int, pair: LoraPair, state: dict) -> ModuleSpec:
        attrs = {
            "name": pair.name, "kind": pair.kind, "in_features": pair.in_features,
            "out_features": pair.out_features, "rank": pair.rank, "alpha": pair.alpha,
            "scaling": pair.scaling, "init": pair.init, "a_trainable": bool(pair.A.requires_grad),
            "b_trainable": bool(pair.B.requires_grad),
            "layer_index": -1 if pair.layer_index is None else pair.layer_index,
            "index": index, "param_dtype": str(pair.A.dtype).removeprefix("torch."),
            "adapter": pair.adapter, "magnitude_norm": pair.magnitude_norm,
            "weight_shape": list(pair.weight_shape),
        }
        w0 = None
        if self.config.base_weights or pair.magnitude is not None:  # DoRA's ΔW needs W0
            # once, one module at a time; under sharding a gather that every rank joins
            weight = self._gather.base_weight(pair)
            w0 = weight.numpy() if weight is not None else None
        magnitude = 0 if pair.magnitude is None else math.prod(self._gather.shape(pair.magnitude))
        return ModuleSpec(pair.name, attrs, pair.a_shape, pair.b_shape, w0=w0, state=state,
                          magnitude=magnitude)

    def _open_file(self, state_layout: dict, resume_step: int | None = None) -> None:
        cfg = self.config
        root = {
            "lorascope_format": format_version(dora=bool(self._dora)),
            "lorascope_version": lorascope.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_name": self.run_name,
            "config": self.run_config,
            "environment": self.environment,
            "record": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "schedule": self.schedule.describe(),
            "planned_steps": -1 if self.total_steps is None else int(self.total_steps),
            "storage_dtype": cfg.dtype,
            "compression": cfg.compression,
            "writer_pid": os.getpid(),
            "writer_host": socket.gethostname(),
            "peft": self.peft,
            "not_recorded": [n.as_dict() for n in self.not_recorded],
        }
        if self._heads is not None:
            root["heads"] = self._heads.describe()
        columns = list(STANDARD_SCALARS)
        if self._optimizer is not None:
            columns += [name for name in lr_names(self._optimizer) if name not in columns]
        modules = [self._module_spec(i, p, state_layout.get(i, {}))
                   for i, p in enumerate(self.pairs.values())]
        self._opened = True
        if not self._gather.writes:  # it joined the gathers of W0; rank 0 writes the file
            return
        layout = FileLayout(root, modules, cfg.dtype, cfg.compression, cfg.grads,
                            cfg.optimizer_state, tuple(columns))
        if resume_step is None:
            # Built under a temporary name and renamed once its layout is on disk: a kill while the
            # file is being created leaves no half-made recording at the output path.
            tmp = self.path.with_name(self.path.name + ".creating")
            file = RecordingFile(tmp, layout)
            replace(tmp, self.path)
            file.path = self.path
        else:
            tmp = temporary_path(self.path)
            file = RecordingFile(tmp, layout, seed=resume_seed(self.path, resume_step))
            replace(tmp, self.path)
            file.path = self.path
            kept = file.f["snapshots/step"]
            self._last_snapshot = int(kept[-1]) if kept.shape[0] else -1
            self._t0 -= float(file.f.attrs["resumed_time_offset"])
        self._writer = WriterThread(file, cfg.queue_size, cfg.flush_every_steps,
                                    cfg.flush_every_seconds)
        early, self._early = self._early, []
        for msg in early:
            self._writer.put(msg)

    def _close_at_exit(self) -> None:
        # a script that never closed its Recorder still keeps what it captured
        try:
            self.close("interrupted")
        except Exception:
            pass


def _state_view(pair: LoraPair, param_shape: tuple[int, ...], tensor: torch.Tensor) -> torch.Tensor:
    """An optimizer-state tensor shaped like its parameter (``param_shape``, whole), seen as the
    recorded matrix; other shapes (Adafactor's factored rows and columns) as they are."""
    return pair.as_matrix(tensor) if tuple(tensor.shape) == tuple(param_shape) else tensor


class NullRecorder:
    """What ranks other than 0 get: the same calls, nothing written."""

    estimate = staticmethod(Recorder.estimate)
    modules: dict = {}

    def estimate_bytes(self, grad_accum: int = 1) -> int:
        return 0

    def start(self, optimizer=None, step: int = 0) -> "NullRecorder":
        return self

    def on_micro_step(self, micro_step: int, loss_scale: float = 1.0) -> None:
        pass

    def on_optimizer_step(self, step: int, scalars=None, optimizer=None) -> None:
        pass

    def log_scalars(self, step: int, scalars) -> None:
        pass

    def log_eval(self, step: int, metrics) -> None:
        pass

    def attach(self, optimizer) -> "NullRecorder":
        return self

    def flush(self, wait: bool = False) -> None:
        pass

    def close(self, status: str = "complete") -> None:
        pass

    def __enter__(self) -> "NullRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False
