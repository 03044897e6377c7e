"""Importing this module registers every table of `lorascope.analysis.TABLES` (the registry's
provider): those of one run's module, the update's geometry against W0 and between the factors,
the recorded gradients, those across runs, and the derived ones. `analyze` loads
it through the registry on the first table asked for, so a run of the health checks alone (a
quick look, `lorascope info`) never imports pandas."""
from __future__ import annotations

from lorascope.analysis import derived, gradient_tables, multirun, pretrained_tables, tables  # noqa: F401 - they register themselves
