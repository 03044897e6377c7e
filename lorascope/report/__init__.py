"""Reports: PNG figures and one self-contained HTML page comparing recordings."""
from __future__ import annotations

from lorascope.report.build import build_report

__all__ = ["build_report"]
