"""Importing this module registers every kind of finding of `SENTENCES` (the registry's
provider), in the files that implement them."""
from __future__ import annotations

from lorascope.analysis.findings import gradients, health, training, weights  # noqa: F401 - they register themselves
