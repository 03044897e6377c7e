"""Reports: PNG figures and one self-contained HTML page comparing recordings. Every number a
figure or table shows is a table of `lorascope.analysis` (the report computes none itself).

Importing this package costs nothing: the figure kinds are declared here with their one-line
descriptions (`MODULE_FIGURES`, so `lorascope report --help` needs neither matplotlib nor
pandas), and `build_report` is imported on first use."""
from __future__ import annotations

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

__all__ = ["MODULE_FIGURES", "DEFAULT_MAX_STEPS", "DEFAULT_MAX_MODULES", "build_report"]

DEFAULT_MAX_STEPS = 120
DEFAULT_MAX_MODULES = 24

# The figures drawn for each module; implemented in module_figures.py, spectral_figures.py,
# pretrained_figures.py and gradient_figures.py.
MODULE_FIGURES: Registry = Registry("report figure kind", declared={
    "histograms": "A and B at the first, a few early and the last step, runs overlaid",
    "heatmap": "the distribution of A and B over steps, one panel per run",
    "moments": "mean, standard deviation and Frobenius norm of A and B over steps",
    "fits": "the best-fitting distribution family and the generalised-normal shape over steps",
    "spectrum": "ΔW's singular values, effective rank and norm over steps",
    "similarity": "subspace similarity of A and B between runs at the final step",
    "intruders": "intruder dimensions of W0 + ΔW over steps (needs W0)",
    "magnitude_direction": "DoRA's magnitude and direction change against W0 over steps (needs W0)",
    "amplification": "how ΔW amplifies directions of W0 over steps (needs W0)",
    "asymmetry": "how far A and B move from their init, and A's row space kept",
    "grad_noise": "the gradient noise within a step of A and B over steps, against pure noise (needs "
                  "micro-step gradients: record.grads and grad_accum >= 2)",
}, provider="lorascope.report.figure_kinds")

__getattr__, __dir__ = lazy_exports(__name__, {"build_report": "lorascope.report.build"})
