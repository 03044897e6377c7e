"""Importing this module registers every figure kind of `lorascope.report.MODULE_FIGURES` (the
registry's provider): the distribution figures and the spectral ones."""
from __future__ import annotations

from lorascope.report import module_figures, spectral_figures  # noqa: F401 - they register themselves
