"""What an analysis computes and which snapshots it reads (`Options`), and `KEYS`, the columns
every table starts with."""
from __future__ import annotations

from dataclasses import dataclass, field

from lorascope.analysis.health import Thresholds
from lorascope.analysis.stats import DEFAULT_QUANTILES
from lorascope.errors import UsageError

__all__ = ["KEYS", "MAX_BINS", "Options"]

KEYS = ["run", "module", "layer", "role", "matrix", "step"]


# More bins than a histogram panel has pixels (or a LoRA matrix has entries) show nothing more;
# 2**14 of them keep a module's counts near 40 MiB at 100 snapshots.
MAX_BINS = 1 << 14


@dataclass(frozen=True)
class Options:
    """What the analysis computes and where it samples. Everything linear in the data (moments,
    norms, dynamics, spectra) covers every entry of every snapshot read; the superlinear parts use
    subsets, and the tables say which: quantiles a fixed subset of `quantile_samples` entries
    (column `quantile_n`), fits `fit_samples` entries (column `n`) at up to `fit_steps` evenly
    spaced snapshots (columns `fitted_steps` of `recorded_steps`), the tables against W0, similarity and
    histograms up to `max_steps` snapshots.

    A quick look (a report, `lorascope info`) reads fewer snapshots: with `read_steps` every
    table sees only that many snapshots per module, evenly spaced with the first and the last
    (plus the ones nearest `histogram_steps`); updates and their cosines then compare consecutive
    snapshots of that sample."""
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    quantile_samples: int | None = 2048  # entries per snapshot the quantiles use (None: all, exact); the fits' entries
    top_k: int = 1                     # energy share of the top-k singular values
    fit_samples: int | None = 2048     # values per snapshot the fits use (None: all)
    fit_steps: int | None = 50         # snapshots fitted, evenly spaced with the first and last (None: all)
    families: tuple[str, ...] | None = None
    criterion: str = "bic"  # with thousands of values AIC lets nested families (t, gennorm) win by noise
    max_steps: int | None = 100        # snapshots used by the tables against W0, similarity, histograms (None: all)
    geometry_steps: int | None = None  # snapshots the tables against W0 use, if fewer than max_steps
    intruder_k: int = 10               # intruders: top singular vectors of W_eff examined (the paper's 10)
    intruder_epsilon: float = 0.5      # intruders: largest |cos| with W0's vectors below which one intrudes
    bins: int = 64                     # histogram bins, shared by every run (and step) of a module
    histogram_steps: tuple[int, ...] = ()  # steps of `step_histograms` (each run's nearest snapshot; (): first run's ends)
    read_steps: int | None = None      # snapshots read per module, evenly spaced (None: all)
    other_series: bool = True          # stats rows of recorded gradients and optimizer state
    thresholds: Thresholds = field(default_factory=Thresholds)
    workers: int = 2  # threads computing one module's independent parts at once (memory: one module's series)
    # Read the next module while analysing this one (memory: two modules' series). Off by default:
    # on a loaded 2-core machine it measured no faster with a cached file; it hides disk time.
    prefetch: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, got {self.workers}")
        if self.bins < 1:
            raise UsageError(f"the number of histogram bins must be at least 1, got {self.bins}")
        if self.bins > MAX_BINS:
            counts = self.bins * 8 * 3 * (self.max_steps or 100)  # int64 counts of A, B and ΔW per snapshot
            raise UsageError(
                f"{self.bins:,} histogram bins would take {counts / 2**30:,.1f} GiB per module and run "
                f"({self.max_steps or 100} snapshots of A, B and ΔW), and no figure shows more bins than "
                f"it has pixels; use at most {MAX_BINS:,}"
            )
        if self.read_steps is not None and self.read_steps < 2:
            raise UsageError(f"read_steps must be at least 2 (the first and the last snapshot), got {self.read_steps}")
        if self.intruder_k < 1:
            raise UsageError(f"intruder_k must be at least 1, got {self.intruder_k}")
        if not 0 < self.intruder_epsilon <= 1:
            raise UsageError(f"intruder_epsilon must lie in (0, 1], got {self.intruder_epsilon}")
        if self.criterion not in ("aic", "bic"):
            raise UsageError(f"criterion must be 'aic' or 'bic', got {self.criterion!r}")
