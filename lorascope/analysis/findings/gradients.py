"""Findings about the recorded gradients, from the `grad_noise` table (seed study 001): how noisy a
step's micro-batch gradients are against their mean (`grad_noise`), per seed group and matrix,
with the level pure noise would give. A recording without micro-step gradients has no rows and
no sentence; the tables arrive as DataFrames, so this module imports no pandas."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.analysis.findings import SENTENCES
from lorascope.analysis.findings.base import Evidence, Link, Maker, Sentence, number

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["grad_noise"]


# Why a module-step has no ratio, by the table's status, in a sentence's words.
_UNDEFINED = {"zero_signal": "a zero mean gradient (as A's while B = 0)",
              "nonfinite": "an Inf/NaN micro-step (an fp16 overflow)"}


def _sentence(ev: Evidence, label: str, matrix: str, rows: pd.DataFrame) -> Sentence:
    """One matrix of one group: the median ratio over its defined module-steps, the micro-steps
    per step, and the roles (medians over their modules and steps) where it is highest and lowest."""
    ok = rows[rows["status"] == "ok"]
    K = int(rows["micro_steps"].mode().iloc[0])
    median = float(ok["ratio"].median())
    by_role = ok.groupby("role", sort=True)["ratio"].median().sort_values(kind="stable")
    steps, modules = int(rows["step"].nunique()), int(rows[["run", "module"]].drop_duplicates().shape[0])
    numbers = {"median_ratio": median, "micro_steps": float(K), "steps": float(steps), "modules": float(modules)}
    text = (ev.about(label) + f"{matrix}'s gradient noise within a step: the micro-batches' variance is "
            f"{number(median, 2)}× the squared norm of their mean (median over {steps} steps of {modules} "
            f"modules; pure noise gives K = {K})")
    if len(by_role) > 1:
        top, bottom = by_role.index[-1], by_role.index[0]
        text += (f", highest in {top} ({number(by_role.iloc[-1], 2)}), "
                 f"lowest in {bottom} ({number(by_role.iloc[0], 2)})")
        numbers.update(highest_role_ratio=float(by_role.iloc[-1]), lowest_role_ratio=float(by_role.iloc[0]))
    undefined = rows["status"].value_counts()
    said = [(f"{int(undefined[status])} module-steps with {why}", status)
            for status, why in _UNDEFINED.items() if status in undefined]
    if said:
        text += "; no ratio at " + " and ".join(words for words, _ in said)
        numbers.update({f"{status}_steps": float(undefined[status]) for _, status in said})
    noisiest = ok.groupby(["run", "module"], sort=False)["ratio"].median().idxmax()[1]
    return Sentence("grad_noise", text, numbers, Link("grad_noise", str(noisiest)), label)


def grad_noise(ev: Evidence) -> list[Sentence]:
    """"A's gradient noise within a step: the micro-batches' variance is 1.3× the squared norm of
    their mean (median over 6 steps of 210 modules; pure noise gives K = 4), highest in
    mlp.down_proj (2.1), lowest in self_attn.q_proj (0.6)": per group and matrix, from the rows
    whose ratio is defined (a matrix with none, e.g. A trained one step from B = 0, says so)."""
    table = ev.tables["grad_noise"]
    out = []
    for group in ev.groups:
        mine = table[table["run"].isin(group.runs)]
        for matrix, rows in mine.groupby("matrix", sort=True):
            if (rows["status"] == "ok").any():
                out.append(_sentence(ev, group.label, str(matrix), rows))
                continue
            statuses = ", ".join(sorted(set(rows["status"])))
            out.append(Sentence("grad_noise", ev.about(group.label) + f"{matrix}'s gradient noise within a "
                                f"step has no ratio at any of its {len(rows)} module-steps ({statuses})",
                                {"undefined": float(len(rows))}, Link("grad_noise", str(rows["module"].iloc[0])),
                                group.label))
    return out


SENTENCES.register("grad_noise")(Maker(grad_noise, ("grad_noise",),
                                        applies=lambda ev: any(run.micro_step_gradients for run in ev.runs)))
