"""Shared helpers of the benchmark suite: interleaved timing, medians and ratios, the tiny synthetic
data every benchmark trains on, and the description of the machine a table was measured on.

These machines are shared and noisy. A benchmark therefore runs its contenders in turn inside one
process (A B C A B C ...), so that a burst of load from a neighbour hits all of them alike, and
reports medians of per-step times and their ratio to a baseline: a ratio measured side by side is
meaningful, an absolute time is not.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = [
    "Segment",
    "Samples",
    "interleave",
    "median",
    "ratio",
    "paired_ratio",
    "folder_bytes",
    "random_batches",
    "machine_info",
    "format_table",
    "format_bytes",
]


@dataclass
class Segment:
    """What one contender's turn measured: per-step seconds (warm-up steps already dropped), the
    seconds spent after the last step (closing files, draining queues), and anything else worth
    keeping (bytes written, what was stored)."""

    step_seconds: list[float]
    finish_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Samples:
    """Every segment of one contender across the repetitions."""

    name: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def step_seconds(self) -> list[float]:
        return [s for seg in self.segments for s in seg.step_seconds]

    @property
    def median_step(self) -> float:
        return median(self.step_seconds)

    @property
    def median_finish(self) -> float:
        return median([seg.finish_seconds for seg in self.segments])

    def last(self, key: str, default=None):
        """The value a contender reported in its last segment (sizes, descriptions)."""
        for seg in reversed(self.segments):
            if key in seg.extra:
                return seg.extra[key]
        return default


def interleave(contenders: dict[str, Callable[[], Segment]], repeats: int,
               log: Callable[[str], None] | None = None) -> dict[str, Samples]:
    """Runs every contender once per repetition, in the order given (A B C A B C ...), and
    collects their segments. The order rotates by one each repetition so that no contender always
    follows the same neighbour (a slow predecessor's leftover work, e.g. a writer thread, would
    otherwise always land on the same successor)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (got {repeats})")
    names = list(contenders)
    results = {name: Samples(name) for name in names}
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            segment = contenders[name]()
            results[name].segments.append(segment)
            if log is not None:
                log(f"  rep {rep + 1}/{repeats} {name:14s} median step "
                    f"{median(segment.step_seconds) * 1000:8.1f} ms")
    return results


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values (a contender that measured nothing shows as NaN, not 0)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("nan")


def paired_ratio(samples: Samples, baseline: Samples) -> tuple[float, float, float]:
    """(median, min, max) over the repetitions of the ratio of the two contenders' median step
    times within one repetition. Turns of one repetition run back to back, so each ratio sees
    nearly the same machine load; the median of these ratios resists slow drifts in load that a
    ratio of overall medians does not."""
    ratios = [ratio(median(a.step_seconds), median(b.step_seconds))
              for a, b in zip(samples.segments, baseline.segments)]
    if not ratios:
        return float("nan"), float("nan"), float("nan")
    return median(ratios), min(ratios), max(ratios)


def folder_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def random_batches(n: int, seq_len: int, vocab_size: int, batch_size: int = 1, seed: int = 0):
    """``n`` causal-LM batches of random token ids (labels = inputs): every contender sees the same
    data, and no tokenizer or dataset download is involved."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return batches


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """What a table must say about where it was measured."""
    import torch

    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="minutes"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }
    try:
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_bytes(n: float) -> str:
    if n != n:  # NaN: nothing was measured
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_table(rows: Iterable[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table: what the README records and the terminal shows."""
    rows = list(rows)
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells)])
