"""Tables built from other tables and from the health findings, registered in
`lorascope.analysis.TABLES`: `family_changes` (from the fits) and `findings`."""
from __future__ import annotations

import pandas as pd

from lorascope.analysis import TABLES
from lorascope.analysis.builders import Derived
from lorascope.analysis.health import Finding
from lorascope.analysis.options import KEYS

__all__ = ["best_family_changes", "findings_frame", "FAMILY_CHANGE_COLUMNS", "FINDING_COLUMNS"]

FAMILY_CHANGE_COLUMNS = (*KEYS, "before", "after")
FINDING_COLUMNS = ("run", "module", "matrix", "step", "severity", "message")


def best_family_changes(fits: pd.DataFrame) -> pd.DataFrame:
    """From a fits table: the steps at which the best family of a (run, module, matrix) changes,
    with columns run, module, layer, role, matrix, step, before, after."""
    from lorascope.analysis.fits import best_family_changes as changes

    rows = []
    best = fits[fits["family"] == fits["family"].iloc[0]] if len(fits) else fits
    for key, g in best.groupby(["run", "module", "matrix"], sort=False):
        g = g.sort_values("step")
        for step, before, after in changes(g["step"].to_numpy(), g["best_family"].to_numpy()):
            rows.append({"run": key[0], "module": key[1], "layer": g["layer"].iloc[0], "role": g["role"].iloc[0],
                         "matrix": key[2], "step": step, "before": before, "after": after})
    return pd.DataFrame(rows, columns=list(FAMILY_CHANGE_COLUMNS))


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """One row per health finding, in the order they were found (each run's loss first, then its
    modules); `module`, `matrix` and `step` are empty for run-level findings."""
    frame = pd.DataFrame([{k: getattr(f, k) for k in FINDING_COLUMNS} for f in findings],
                         columns=list(FINDING_COLUMNS))
    frame["step"] = frame["step"].astype("Int64")
    return frame


TABLES.register("family_changes")(Derived(lambda tables, findings: best_family_changes(tables["fits"]),
                                          sources=("fits",), columns=FAMILY_CHANGE_COLUMNS))
TABLES.register("findings")(Derived(lambda tables, findings: findings_frame(findings), health=True,
                                    columns=FINDING_COLUMNS))
