"""Importing this module registers every figure kind of `lorascope.report.MODULE_FIGURES` (the
registry's provider): the distribution figures, the spectral ones, those against W0 and the
gradients' noise."""
from __future__ import annotations

# they register themselves
from lorascope.report import gradient_figures, module_figures, pretrained_figures, spectral_figures  # noqa: F401
