"""Importing this module registers every figure kind of `lorascope.report.MODULE_FIGURES` (the
registry's provider): the distribution figures, the spectral ones and those against W0."""
from __future__ import annotations

# they register themselves
from lorascope.report import module_figures, pretrained_figures, spectral_figures  # noqa: F401
