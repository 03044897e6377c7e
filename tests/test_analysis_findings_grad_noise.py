"""The gradient-noise finding: its sentence on a grad_noise table built here with known medians,
per seed group, its silence without micro-step gradients, and its sentence when no step has a
ratio; and end to end from a fake run's gradients through `analyze`."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from lorascope import analysis
from lorascope.analysis.findings import evidence, find

from analysis_fakes import lora_run, with_gradients


def _run(name: str, seed: int = 0, group: str = "g", grad_steps=np.repeat([1, 2, 3], 4)):
    """A recording as the findings read it; by default with 4 micro-step gradients per step."""
    scalars = {"step": np.arange(1, 3, dtype=float), "loss": np.array([2.0, 1.0])}
    return SimpleNamespace(run_name=name, config={"group": group, "seed": seed}, scalar_columns=scalars, times=None,
                           grad_steps=grad_steps)


def _table(runs, ratio, K=4, steps=(1, 2, 3), status=None):
    """grad_noise rows of two roles' modules: ratio(run, role, matrix, step)."""
    modules = {"h.0.q": "q", "h.0.down": "down", "h.1.q": "q", "h.1.down": "down"}
    rows = [{"run": r, "module": m, "role": role, "matrix": x, "step": s, "micro_steps": K,
             "ratio": ratio(r, role, x, s), "status": (status or (lambda *a: "ok"))(r, role, x, s)}
            for r in runs for m, role in modules.items() for x in ("A", "B") for s in steps]
    return pd.DataFrame(rows)


def _sentences(recs, table):
    found = find(evidence(recs, {"grad_noise": table}), ["grad_noise"])
    assert not found.left_out
    return found.sentences


def test_the_median_ratio_per_matrix_and_the_roles_at_either_end():
    table = _table(["a"], lambda r, role, x, s: {"q": 0.5, "down": 2.0}[role] * (1 if x == "A" else 3) * s)
    a, b = _sentences([_run("a")], table)
    want_a = np.median(table[table.matrix == "A"].ratio)
    assert a.numbers["median_ratio"] == want_a and a.numbers["micro_steps"] == 4
    assert a.numbers == {"median_ratio": want_a, "micro_steps": 4, "steps": 3, "modules": 4,
                         "highest_role_ratio": 4.0, "lowest_role_ratio": 1.0}
    assert a.text == ("A's gradient noise within a step: the micro-batches' variance is 1.8× the squared norm "
                      "of their mean (median over 3 steps of 4 modules; pure noise gives K = 4), highest in down "
                      "(4), lowest in q (1)")
    assert b.numbers["highest_role_ratio"] == 12.0 and b.text.startswith("B's gradient noise")
    assert a.link.figure == "grad_noise" and a.link.module in {"h.0.down", "h.1.down"}


def test_undefined_steps_are_left_out_of_the_median_and_counted():
    table = _table(["a"], lambda r, role, x, s: np.nan if (x == "A" and s == 1) else 1.0 + s,
                   status=lambda r, role, x, s: "zero_signal" if (x == "A" and s == 1) else "ok")
    a, _ = _sentences([_run("a")], table)
    assert a.numbers["median_ratio"] == 3.5 and a.numbers["zero_signal_steps"] == 4
    assert a.text.endswith("; no ratio at 4 module-steps with a zero mean gradient (as A's while B = 0)")
    table.loc[(table.matrix == "A") & (table.step == 2) & (table.role == "q"), ["ratio", "status"]] = [np.nan, "nonfinite"]
    a, _ = _sentences([_run("a")], table)
    assert a.numbers["median_ratio"] == 3.5 + 0.5 and a.numbers["nonfinite_steps"] == 2
    assert a.text.endswith("; no ratio at 4 module-steps with a zero mean gradient (as A's while B = 0) and "
                           "2 module-steps with an Inf/NaN micro-step (an fp16 overflow)")


def test_a_matrix_without_any_ratio_says_so():
    table = _table(["a"], lambda *a: np.nan, steps=(1,), status=lambda r, role, x, s: "zero_signal")
    texts = [s.text for s in _sentences([_run("a")], table)]
    assert texts[0] == "A's gradient noise within a step has no ratio at any of its 4 module-steps (zero_signal)"


def test_one_sentence_per_seed_group_and_none_without_rows():
    recs = [_run("x-s0", 0, "x"), _run("x-s1", 1, "x"), _run("y-s0", 0, "y")]
    table = _table(["x-s0", "x-s1", "y-s0"], lambda r, role, x, s: 1.0 if r.startswith("x") else 3.0)
    sentences = _sentences(recs, table)
    assert [(s.run, s.text.split(" gradient")[0], s.numbers["median_ratio"]) for s in sentences] == [
        ("x", "x: A's", 1.0), ("x", "x: B's", 1.0), ("y-s0", "y-s0: A's", 3.0), ("y-s0", "y-s0: B's", 3.0)]
    assert sentences[0].numbers["modules"] == 8  # four modules in each of the group's two seeds
    assert _sentences(recs, table.iloc[:0]) == []


def test_from_recorded_gradients_through_analyze():
    rec = with_gradients(lora_run("noisy"), {s: 4 for s in range(1, 9)}, seed=2)
    table = analysis.analyze(rec, ("grad_noise",), health=False).tables["grad_noise"]
    sentences = _sentences([rec], table)
    assert [s.text[:3] for s in sentences] == ["A's", "B's"]
    for s in sentences:  # Gaussian micro-gradients with no common direction: about K
        assert 3.0 < s.numbers["median_ratio"] < 5.0 and s.numbers["steps"] == 8 and s.numbers["modules"] == 2


def test_runs_without_micro_step_gradients_have_nothing_to_say_or_leave_out():
    """Gradient noise is about micro-step gradients: runs without them (no gradients, or one per
    step) get no sentence and no "not looked at" note; with them but without the table, the
    kind is named as left out."""
    for steps in (None, np.array([1, 2, 3])):
        found = find(evidence([_run("a", grad_steps=steps)]), ["grad_noise"])
        assert not found.sentences and not found.left_out
    found = find(evidence([_run("a")]), ["grad_noise"])
    assert found.left_out == {"grad_noise": ("grad_noise",)}
