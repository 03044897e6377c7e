"""The tables of the update's geometry over steps, registered in `lorascope.analysis.TABLES`:
against the pretrained weight W0 (`intruders`, `magnitude_direction`, `amplification`: they need
W0 recorded, `record.base_weights`) and between the two factors (`asymmetry`). ΔW is the update
from the pretrained weight (`update.py`), taken as low-rank factors (`lowrank.update_factors`),
W0's SVD once per module (`ModuleAnalysis.pretrained_svd`). A module without W0 gives no rows
and one note per run (`Analysis.notes`), never a silently empty table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorascope.analysis import TABLES
from lorascope.analysis import asymmetry as _asym
from lorascope.analysis import intruders as _intr
from lorascope.analysis import pretrained as _pre
from lorascope.analysis.builders import PerRun, evenly_spaced
from lorascope.analysis.module import ModuleAnalysis
from lorascope.analysis.options import KEYS, Options

__all__ = ["INTRUDER_COLUMNS", "MAGNITUDE_DIRECTION_COLUMNS", "AMPLIFICATION_COLUMNS", "ASYMMETRY_COLUMNS",
           "intruder_rows", "magnitude_direction_rows", "amplification_rows", "asymmetry_rows", "NO_W0", "DORA"]

INTRUDER_COLUMNS = (*KEYS, "k", "epsilon", "count", "worst_similarity", "status")
MAGNITUDE_DIRECTION_COLUMNS = (*KEYS, "magnitude_change", "direction_change", "correlation")
AMPLIFICATION_COLUMNS = (*KEYS, "k", "frobenius", "projection", "amplification", "random_projection",
                         "random_amplification", "status")
ASYMMETRY_COLUMNS = (*KEYS, "distance", "relative", "init_norm", "phi", "phi_status", "status")

NO_W0 = "no W0 recorded (record with --set record.base_weights=true)"


def geometry_steps(o: Options) -> int | None:
    """Snapshots the tables against W0 read: `geometry_steps`, else `max_steps`."""
    return o.max_steps if o.geometry_steps is None else o.geometry_steps


DORA = "a DoRA module (its ΔW = W_eff − W0 is not the low-rank product this table takes)"


def _no_w0(ma: ModuleAnalysis) -> str | None:
    return NO_W0 if ma.pretrained is None else None


def _low_rank_update(ma: ModuleAnalysis) -> str | None:
    """Why a table of ΔW's singular directions has no rows for this module, if it has none."""
    return _no_w0(ma) or (DORA if ma.dora else None)


def _picked(ma: ModuleAnalysis) -> np.ndarray:
    return ma.evenly(geometry_steps(ma.options))


def intruder_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Shuttleworth et al. 2024's intruder dimensions of W_eff = W0 + ΔW_t (matrix 'W'): among its
    top `intruder_k` left-singular vectors, how many have no W0 singular vector with |cos| ≥
    `intruder_epsilon` (`count`), and the smallest such largest |cos| (`worst_similarity`)."""
    if _low_rank_update(ma):
        return []
    idx = _picked(ma)
    P, Q = ma.update_factors(idx)
    o = ma.options
    got = _intr.intruder_dimensions(ma.pretrained_svd, P, Q, o.intruder_k, o.intruder_epsilon)
    k = got["similarity"].shape[1]
    return [ma.frame("W", {"k": k, "epsilon": o.intruder_epsilon, "count": got["count"],
                           "worst_similarity": got["worst_similarity"], "status": got["status"]}, idx)]


def magnitude_direction_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """DoRA's (Liu et al. 2024) split of the change of W_eff against W0: ΔM the mean |change of a
    row's norm|, ΔD the mean 1 − cos of a row with its W0 row, per snapshot, and `correlation`,
    Pearson's over the snapshots of the rows (the same on each row of a run's module; the paper
    finds +0.83 for LoRA, −0.62 for full fine-tuning, −0.31 for DoRA)."""
    if ma.pretrained is None:
        return []
    idx = _picked(ma)
    magnitude, norm = ma.magnitude(idx)
    # DoRA's W_eff rescales V = W0 + s·B·A (no compensated base); LoRA's is W0 + ΔW
    P, Q = ma.update_factors(idx) if magnitude is None else ma.lora_factors(idx)
    got = _pre.magnitude_direction(ma.pretrained, P, Q, magnitude, norm)
    corr = _pre.correlation(got["magnitude_change"], got["direction_change"])
    return [ma.frame("dW", {**got, "correlation": corr}, idx)]


def amplification_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """The LoRA paper's §7 amplification per snapshot: ‖ΔW‖_F / ‖UᵀW0V‖_F with U, V ΔW's top-k
    singular directions, k the LoRA rank, beside the same for random directions."""
    if _low_rank_update(ma):
        return []
    idx = _picked(ma)
    P, Q = ma.update_factors(idx)
    k = min(ma.rank, P.shape[2], *ma.pretrained.shape)
    got = _pre.amplification(ma.pretrained, P, Q, k)
    return [ma.frame("dW", {"k": k, **got}, idx)]


def asymmetry_rows(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Zhu et al. 2024's asymmetry of the factors per snapshot, a row each for A and B: `distance`
    ‖X_t − X_0‖_F, `relative` that over ‖X_0‖_F (NaN with status 'zero_init' where X_0 = 0,
    B's usual init), and for A `phi` = φ(A_t, A_0, r, r), how much of A's initial row space it
    keeps (`phi_status` as the similarity table's)."""
    got = _asym.asymmetry(ma.A, ma.B, (ma.A[0], ma.B[0]))
    frames = []
    for m in ("A", "B"):
        dist, init = got[f"{m}_distance"], got[f"{m}_init_norm"]
        status = np.where(~np.isfinite(dist), "nonfinite", np.where(init == 0, "zero_init", "ok")).astype(object)
        phi = got["A_phi"] if m == "A" else np.full(len(dist), np.nan)
        phi_status = got["A_phi_status"] if m == "A" else np.full(len(dist), None, dtype=object)
        frames.append(ma.frame(m, {"distance": dist, "relative": got[f"{m}_relative"], "init_norm": init,
                                   "phi": phi, "phi_status": phi_status, "status": status}))
    return frames


_EVERY_GEOMETRY_STEP = evenly_spaced(geometry_steps)
TABLES.register("intruders")(PerRun(intruder_rows, (), _EVERY_GEOMETRY_STEP, INTRUDER_COLUMNS,
                                    note=_low_rank_update))
TABLES.register("magnitude_direction")(PerRun(magnitude_direction_rows, (), _EVERY_GEOMETRY_STEP,
                                              MAGNITUDE_DIRECTION_COLUMNS, note=_no_w0))
TABLES.register("amplification")(PerRun(amplification_rows, (), _EVERY_GEOMETRY_STEP, AMPLIFICATION_COLUMNS,
                                        note=_low_rank_update))
TABLES.register("asymmetry")(PerRun(asymmetry_rows, (), columns=ASYMMETRY_COLUMNS))
