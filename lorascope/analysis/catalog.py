"""Importing this module registers every table of `lorascope.analysis.TABLES` (the registry's
provider): those of one run's module, those across runs, and the derived ones. `analyze` loads
it through the registry on the first table asked for, so a run of the health checks alone (a
quick look, `lorascope info`) never imports pandas."""
from __future__ import annotations

from lorascope.analysis import derived, multirun, tables  # noqa: F401 - they register themselves
