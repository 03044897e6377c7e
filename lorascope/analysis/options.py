"""What an analysis computes and which snapshots it reads (`Options`), and `KEYS`, the columns
every table starts with."""
from __future__ import annotations

from dataclasses import dataclass, field

from lorascope.analysis.health import Thresholds
from lorascope.analysis.stats import DEFAULT_QUANTILES
from lorascope.errors import UsageError

__all__ = ["KEYS", "Options"]

KEYS = ["run", "module", "layer", "role", "matrix", "step"]


@dataclass(frozen=True)
class Options:
    """What the analysis computes and where it samples. Everything linear in the data (moments,
    norms, dynamics, spectra) covers every entry of every snapshot read; the superlinear parts use
    subsets, and the tables say which: quantiles a fixed subset of `quantile_samples` entries
    (column `quantile_n`), fits `fit_samples` entries (column `n`) at up to `fit_steps` evenly
    spaced snapshots (columns `fitted_steps` of `recorded_steps`), geometry, similarity and
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
    max_steps: int | None = 100        # snapshots used by the SVD-heavy geometry, similarity, histograms (None: all)
    geometry_steps: int | None = None  # snapshots the geometry uses, if fewer than max_steps (it multiplies by W0)
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
        if self.read_steps is not None and self.read_steps < 2:
            raise UsageError(f"read_steps must be at least 2 (the first and the last snapshot), got {self.read_steps}")
        if self.criterion not in ("aic", "bic"):
            raise UsageError(f"criterion must be 'aic' or 'bic', got {self.criterion!r}")
