"""Findings in sentences: each kind of finding on tables built here with a known answer, the
seed-spread rule on both sides of its boundary, and the rule that a sentence carries numbers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lorascope.analysis.findings import SENTENCES, Sentence, evidence, find
from lorascope.analysis.findings.spread import DIFFER, UNKNOWN, WITHIN, Spread, compare
from lorascope.analysis.findings.training import LOSS_SHARE, STALL_FRACTION, chance_floor, level, reach_step
from lorascope.analysis.health import Finding


def _run(name: str, seed: int = 0, group: str = "g", scalars: dict | None = None, times=None):
    """A recording as the findings read it: name, config (the group's without the seed), scalars."""
    scalars = scalars or {"step": np.arange(1, 3, dtype=float), "loss": np.array([2.0, 1.0])}
    return SimpleNamespace(run_name=name, config={"group": group, "seed": seed}, scalar_columns=scalars,
                           times=None if times is None else np.asarray(times, dtype=float))


def _texts(found, kind):
    return [s.text for s in found.sentences if s.kind == kind]


# --- the seed-spread rule --------------------------------------------------------------------

def test_ranges_that_do_not_overlap_differ_and_touching_ones_do_not():
    a, b = Spread.of([0.80, 0.81, 0.82]), Spread.of([0.76, 0.78, 0.79])
    assert compare(a, b) == compare(b, a) == DIFFER
    assert compare(a, Spread.of([0.78, 0.80])) == WITHIN  # 0.80 is in both ranges
    assert compare(a, Spread.of([0.70])) == UNKNOWN  # one seed: no spread to weigh against
    assert compare(Spread.of([1.0]), Spread.of([5.0])) == UNKNOWN


def test_a_spread_is_numpys_mean_min_max_of_the_finite_values():
    values = [0.3, np.nan, 0.9, 0.6]
    s = Spread.of(values)
    assert (s.n, s.mean, s.low, s.high) == (3, pytest.approx(np.nanmean(values)), 0.3, 0.9)
    assert Spread.of([np.nan]) is None
    assert s.text() == "0.6 (0.3–0.9, 3 seeds)" and Spread.of([2.0]).text(" s") == "2 s (one seed)"


def test_a_sentence_without_numbers_is_refused():
    with pytest.raises(ValueError, match="numbers"):
        Sentence("metrics", "svd is better", {})


# --- zero-start departure --------------------------------------------------------------------

def _stats(runs, modules, steps, frob_A, frob_B):
    """A stats table of A and B rows: frob_X(run, module, step) gives the Frobenius norm."""
    rows = [{"run": r, "module": m, "matrix": x, "step": s, "frobenius": f(r, m, s), "update_size": np.nan}
            for r in runs for m in modules for x, f in (("A", frob_A), ("B", frob_B)) for s in steps]
    return pd.DataFrame(rows)


def test_b_leaves_zero_at_step_1_in_every_module_of_every_seed():
    recs = [_run("lora-s0", 0), _run("lora-s1", 1)]
    stats = _stats(["lora-s0", "lora-s1"], [f"m{i}" for i in range(7)], [0, 1, 2, 3],
                   lambda r, m, s: 1.0, lambda r, m, s: 0.1 * s)
    found = find(evidence(recs, {"stats": stats}), ["zero_start"])
    assert _texts(found, "zero_start") == ["B leaves zero at step 1 in 14/14 modules across 2 seeds"]
    assert found.sentences[0].numbers["left"] == 14 and found.sentences[0].link.figure == "moments"


def test_gaussian_b_zeroes_a_and_a_late_snapshot_says_by():
    # A starts at zero (gaussian_b); the snapshots read are 0, 5, 10, so A is known to have left
    # zero only by step 5; one module's A never leaves it
    stats = _stats(["run"], ["m0", "m1", "m2"], [0, 5, 10],
                   lambda r, m, s: 0.0 if (s == 0 or m == "m2") else 1.0, lambda r, m, s: 2.0)
    found = find(evidence([_run("run")], {"stats": stats}), ["zero_start"])
    assert _texts(found, "zero_start") == ["A leaves zero by step 5 in 2/3 modules; 1 stay at zero through step 10"]
    assert found.sentences[0].numbers["stays_through"] == 10


def test_no_factor_at_zero_no_sentence():
    stats = _stats(["run"], ["m0"], [0, 1], lambda r, m, s: 1.0, lambda r, m, s: 1.0)
    assert find(evidence([_run("run")], {"stats": stats}), ["zero_start"]).sentences == []


# --- distribution family over time ----------------------------------------------------------

FAMILIES = ("normal", "uniform", "gennorm", "t")


def _fits(run, modules, best_at, steps=(0, 4, 8, 12), shape=6.4, method=lambda run, m, s, fam: "mle"):
    """A fits table: best_at(module, step) names the best family; gennorm's shape is `shape`."""
    rows = []
    for m in modules:
        for s in steps:
            best = best_at(m, s)
            for fam in FAMILIES:
                rows.append({"run": run, "module": m, "matrix": "A", "step": s, "family": fam,
                             "shape": shape if fam == "gennorm" else (5.0 if fam == "t" else np.nan),
                             "best": fam == best, "best_family": best, "method": method(run, m, s, fam)})
    return pd.DataFrame(rows)


def test_a_moves_from_uniform_to_gennorm_under_one_optimizer_and_stays_uniform_under_the_other():
    adamw = _fits("adamw", ["m0", "m1", "m2", "m3"], lambda m, s: "uniform" if s < 8 else "gennorm")
    adafactor = _fits("adafactor", ["m0", "m1", "m2", "m3"], lambda m, s: "uniform", steps=(0, 20, 40, 60))
    recs = [_run("adamw", group="adamw"), _run("adafactor", group="adafactor")]
    found = find(evidence(recs, {"fits": pd.concat([adamw, adafactor])}), ["families"])
    assert _texts(found, "families") == [
        "adamw: A's best family: uniform → gennorm (β 6.4) by step 8 (8–8 over modules); gennorm in 4/4 "
        "modules at step 12, uniform in 4/4 at step 0",
        "adafactor: A's best family: still uniform at step 60, as at step 0, in 4/4 modules",
    ]
    assert found.sentences[0].numbers["shape"] == pytest.approx(6.4)
    assert found.sentences[0].link.figure == "fits"


def test_only_maximum_likelihood_fits_count():
    # at step 12 the gennorm fit of m0 stopped at a bound of its shape: that snapshot has no
    # ranked family, so m0 ends at step 8 as uniform
    fits = _fits("run", ["m0", "m1", "m2"], lambda m, s: "gennorm" if (m == "m0" and s == 12) else "uniform",
                 method=lambda run, m, s, fam: "bounded" if (m == "m0" and s == 12 and fam == "gennorm") else "mle")
    found = find(evidence([_run("run")], {"fits": fits}), ["families"])
    assert _texts(found, "families") == ["A's best family: still uniform at step 12, as at step 0, in 3/3 modules"]


# --- metrics across groups: finals and the step a level is reached ----------------------------

EVAL_STEPS = np.arange(10, 101, 10, dtype=float)


def _curve(reach: float, final: float) -> np.ndarray:
    """Eval accuracy over EVAL_STEPS: 0.5 until `reach`, 0.78 from there, `final` at the end."""
    y = np.where(EVAL_STEPS < reach, 0.5, 0.78)
    y[-1] = final
    return y


def _eval_run(name, group, seed, reach, final, examples=872.0, time=100.0):
    steps = np.arange(1, 101, dtype=float)
    acc = np.full(100, np.nan)
    acc[EVAL_STEPS.astype(int) - 1] = _curve(reach, final)
    n = np.full(100, np.nan)
    n[EVAL_STEPS.astype(int) - 1] = examples
    scalars = {"step": steps, "loss": np.linspace(1.0, 0.5, 100), "eval_accuracy": acc, "eval_examples": n,
               "eval_runtime": np.where(np.isnan(acc), np.nan, 3.0)}
    return _run(name, seed, group, scalars, times=[0.0, time])


def test_svd_reaches_the_level_before_kaiming_and_ends_higher_beyond_the_seed_spread():
    recs = [_eval_run(f"svd-s{s}", "svd", s, reach, final)
            for s, reach, final in ((0, 20, 0.80), (1, 30, 0.81), (2, 40, 0.82))]
    recs += [_eval_run(f"kaiming-s{s}", "kaiming", s, reach, final)
             for s, reach, final in ((0, 70, 0.76), (1, 80, 0.78), (2, 90, 0.79))]
    found = find(evidence(recs), ["metrics"])
    kaiming_mean = np.mean([0.76, 0.78, 0.79])
    assert level([0.81, kaiming_mean], lower=False) == pytest.approx(0.77)  # 0.7767 rounded down
    assert _texts(found, "metrics") == [
        "final eval accuracy: svd 0.81 (0.8–0.82, 3 seeds), kaiming 0.777 (0.76–0.79, 3 seeds) (eval set 872 examples)",
        "svd's final eval accuracy is higher than kaiming's beyond the seed spread "
        "(svd 0.81 (0.8–0.82, 3 seeds); kaiming 0.777 (0.76–0.79, 3 seeds))",
        "eval accuracy reaches 0.77: svd at step 30 (20–40, 3 seeds), kaiming at step 80 (70–90, 3 seeds)",
        "svd's step to reach eval accuracy 0.77 is earlier than kaiming's beyond the seed spread "
        "(svd 30 (20–40, 3 seeds); kaiming 80 (70–90, 3 seeds))",
    ]
    first = found.sentences[0]
    assert first.numbers["svd.mean"] == pytest.approx(0.81) and first.numbers["eval_examples"] == 872
    assert first.link.figure == "training_seeds"


def test_an_accuracy_level_at_the_majority_rate_is_reached_by_no_one():
    """Runs that end at or below the majority label's share (a model answering that label to
    everything) "reach" such a level at their first evaluation: no step-to-reach sentence then;
    the finals still carry the majority rate beside the eval set size."""
    def at_chance(run: SimpleNamespace, final: float) -> SimpleNamespace:
        acc = run.scalar_columns["eval_accuracy"]
        run.scalar_columns["eval_accuracy"] = np.where(np.isnan(acc), np.nan, 0.6)
        run.scalar_columns["eval_accuracy"][EVAL_STEPS.astype(int)[-1] - 1] = final
        run.scalar_columns["eval_majority"] = np.where(np.isnan(acc), np.nan, 0.6)
        return run

    recs = [at_chance(_eval_run("r16", "r16", 0, 20, 0.8), 0.67), at_chance(_eval_run("r1", "r1", 0, 20, 0.8), 0.59)]
    texts = _texts(find(evidence(recs), ["metrics"]), "metrics")
    assert texts[0] == "final eval accuracy: r16 0.67 (one seed), r1 0.59 (one seed) (eval set 872 examples, majority label 0.6)"
    assert not any("reaches" in t for t in texts)


def test_a_group_within_chance_never_reaches_the_level_the_learners_end_at():
    """The level is the worst final of the groups that learned: a group whose accuracy ends
    within two binomial standard errors of the majority rate (0.6 on 872 examples: below 0.633)
    would pull the level down to chance, where every run 'reaches' it at once; it is named as
    never reaching the level instead."""
    def with_majority(run: SimpleNamespace) -> SimpleNamespace:
        acc = run.scalar_columns["eval_accuracy"]
        run.scalar_columns["eval_majority"] = np.where(np.isnan(acc), np.nan, 0.6)
        return run

    flat = with_majority(_eval_run("flat", "flat", 0, 200, 0.62))  # 0.5 throughout, 0.62 at the end
    recs = [with_majority(_eval_run("svd", "svd", 0, 20, 0.80)), with_majority(_eval_run("kaiming", "kaiming", 0, 60, 0.76)), flat]
    facts = evidence(recs)
    assert chance_floor(list(facts.runs), "eval_accuracy") == pytest.approx(0.6 + 2 * math.sqrt(0.24 / 872))
    texts = _texts(find(facts, ["metrics"]), "metrics")
    assert "eval accuracy reaches 0.76: svd at step 20 (one seed), kaiming at step 60 (one seed); flat never reaches it" in texts
    assert chance_floor(list(facts.runs), "eval_loss") == -math.inf  # no chance level logged for it


def test_reach_step_and_level():
    steps, values = np.array([10.0, 20, 30]), np.array([0.5, 0.8, 0.9])
    assert reach_step(steps, values, 0.75, lower=False) == 20
    assert math.isnan(reach_step(steps, values, 0.95, lower=False))
    assert reach_step(steps, np.array([3.0, 2.0, 1.0]), 2.5, lower=True) == 20
    assert level([0.412, 0.903], lower=True) == pytest.approx(0.91)  # the worst loss, rounded up


def test_overlapping_seeds_are_no_difference_and_one_seed_is_an_unknown_spread():
    recs = [_eval_run(f"a-s{s}", "a", s, 20, f) for s, f in ((0, 0.80), (1, 0.84))]
    recs += [_eval_run(f"b-s{s}", "b", s, 20, f) for s, f in ((0, 0.79), (1, 0.81))]
    recs += [_eval_run("c", "c", 0, 20, 0.60)]
    texts = _texts(find(evidence(recs), ["metrics"]), "metrics")
    assert ("no difference in final eval accuracy beyond the seed spread between a and b "
            "(a 0.82 (0.8–0.84, 2 seeds); b 0.8 (0.79–0.81, 2 seeds))") in texts
    assert ("a against c in final eval accuracy: a single seed, so the spread is unknown and no difference is "
            "claimed (a 0.82 (0.8–0.84, 2 seeds); c 0.6 (one seed))") in texts
    assert not any("higher than" in t for t in texts)


def test_seeds_that_never_reach_the_level_are_counted():
    # a: one seed at 0.78 from step 20, one at 0.5 that ends at 0.55 (mean 0.675); c ends at 0.70:
    # the level is 0.67, which a's second seed never reaches
    recs = [_eval_run("a-s0", "a", 0, 20, 0.80), _eval_run("a-s1", "a", 1, 200, 0.55),
            _eval_run("c", "c", 0, 20, 0.70)]
    texts = _texts(find(evidence(recs), ["metrics"]), "metrics")
    assert "eval accuracy reaches 0.67: a at step 20 (one seed, 1 of 2 seeds never reach it), c at step 20 (one seed)" \
        in texts


def test_lower_loss_is_better():
    def run(name, final):
        steps = np.arange(1, 11, dtype=float)
        return _run(name, 0, name, {"step": steps, "eval_loss": np.linspace(3.0, final, 10)})

    texts = _texts(find(evidence([run("a", 1.0), run("b", 2.0)]), ["metrics"]), "metrics")
    assert texts[0] == "final eval loss: a 1 (one seed), b 2 (one seed)"


def test_one_run_states_its_final_and_best_values():
    rec = _eval_run("run", "g", 0, 30, 0.74)
    texts = _texts(find(evidence([rec]), ["metrics"]), "metrics")
    assert texts == ["final eval accuracy 0.74 at step 100 (best 0.78 at step 30; eval set 872 examples)"]


# --- stalls ---------------------------------------------------------------------------------

def _stall_run(decay: float, loss_after: float, steps=np.arange(0, 101, 10)):
    """Two modules whose ΔW update per step is 1·decay^k at the k-th snapshot after the first
    (per 10 steps), with a loss that falls 3 → 2 by step 40 and then by `loss_after` in all."""
    per_step = np.concatenate([[np.nan], decay ** np.arange(len(steps) - 1)])
    # update_size covers the 10 steps between snapshots; per module 1/sqrt(2) so the two add up
    rows = [{"run": "run", "module": m, "matrix": "dW", "step": int(s), "frobenius": 1.0,
             "update_size": u * 10 / np.sqrt(2)} for m in ("m0", "m1") for s, u in zip(steps, per_step)]
    t = np.arange(1, 101, dtype=float)
    loss = np.where(t <= 40, 3.0 - (t - 1) / 39.0, 2.0 - loss_after * (t - 40) / 60.0)
    lr = 1e-3 * 0.9 ** t
    return pd.DataFrame(rows), _run("run", scalars={"step": t, "loss": loss, "lr": lr})


def test_an_update_that_falls_away_while_the_loss_stops_is_a_stall():
    stats, rec = _stall_run(decay=0.5, loss_after=0.01)
    found = find(evidence([rec], {"stats": stats}), ["stall"])
    # update per step: 1, .5, .25, .125, .0625, .03125 at steps 10..60: below 5% of the peak from step 60
    assert STALL_FRACTION == 0.05
    [s] = found.sentences
    assert s.numbers["stall_step"] == 60 and s.numbers["peak_step"] == 10
    assert s.numbers["peak_update"] == pytest.approx(1.0)
    assert s.numbers["final_share"] == pytest.approx(0.5 ** 9)
    assert s.numbers["lr_share"] == pytest.approx(0.9 ** 60 / 0.9)
    assert s.numbers["loss_after"] < LOSS_SHARE * s.numbers["loss_before"]
    assert s.text.startswith("ΔW's update per step falls below 5% of its peak (1 at step 10) from step 60 on")


def test_a_steady_update_or_a_loss_still_improving_is_no_stall():
    steady, rec = _stall_run(decay=0.95, loss_after=0.01)
    assert find(evidence([rec], {"stats": steady}), ["stall"]).sentences == []
    falling, improving = _stall_run(decay=0.5, loss_after=0.9)
    assert find(evidence([improving], {"stats": falling}), ["stall"]).sentences == []


# --- wall time, health, the registry -----------------------------------------------------------

def test_wall_time_per_group_weighed_by_the_seed_spread():
    recs = [_run(f"r1-s{s}", s, "r1", times=[0.0, t]) for s, t in ((0, 210.0), (1, 214.0))]
    recs += [_run(f"head-s{s}", s, "head", times=[0.0, t]) for s, t in ((0, 150.0), (1, 152.0))]
    texts = _texts(find(evidence(recs), ["wall_time"]), "wall_time")
    assert texts == ["wall time: head 151 s (150–152, 2 seeds), r1 212 s (210–214, 2 seeds)",
                     "head's wall time is shorter than r1's beyond the seed spread "
                     "(head 151 s (150–152, 2 seeds); r1 212 s (210–214, 2 seeds))"]
    assert find(evidence(recs[:2]), ["wall_time"]).sentences == []  # one group: nothing differs


def test_health_findings_are_sentences_linked_to_their_figure():
    findings = [Finding("warning", None, None, 40, "the loss diverges", run="a"),
                Finding("warning", "m0", "dW", 12, "effective rank of ΔW fell to 1.20", run="a")]
    found = find(evidence([_run("a")], health=findings), ["health"])
    assert _texts(found, "health") == ["warning at step 40: the loss diverges",
                                       "warning: m0 dW at step 12: effective rank of ΔW fell to 1.20"]
    assert [str(s.link) for s in found.sentences] == ["training", "spectrum of m0"]
    several = find(evidence([_run("a"), _run("b", group="other")], health=findings), ["health"])
    assert _texts(several, "health")[0] == "warning: run a at step 40: the loss diverges"


def test_a_kind_whose_tables_are_missing_is_named_not_dropped():
    found = find(evidence([_run("a")]))
    assert set(found.left_out) == {"zero_start", "families", "stall"}
    assert found.left_out_note().startswith("not looked at here: zero_start (needs the stats table)")
    assert found.lines()[-1] == found.left_out_note()


def test_every_declared_kind_is_implemented():
    SENTENCES.load()
    assert SENTENCES.names() == ["zero_start", "families", "metrics", "stall", "wall_time", "grad_noise", "health"]


def test_too_few_evaluations_give_no_step_to_reach_a_level():
    def run(name, group, seed, final):
        steps = np.arange(1, 41, dtype=float)
        acc = np.full(40, np.nan)
        acc[[19, 39]] = [0.5, final]  # two evaluations: no curve to reach a level on
        return _run(name, seed, group, {"step": steps, "eval_accuracy": acc})

    recs = [run("a-s0", "a", 0, 0.6), run("a-s1", "a", 1, 0.62), run("b-s0", "b", 0, 0.5), run("b-s1", "b", 1, 0.52)]
    texts = _texts(find(evidence(recs), ["metrics"]), "metrics")
    assert texts[0].startswith("final eval accuracy: a 0.61") and not any("reaches" in t for t in texts)


def test_group_labels_lose_the_words_every_one_shares():
    from lorascope.analysis.findings.compose import short_labels

    assert short_labels(["study003-svd-lr0.0004", "study003-kaiming_uniform-lr0.0004"]) == ["svd", "kaiming_uniform"]
    assert short_labels(["s-svd-lr1", "s-svd-lr2", "s-pissa-lr1"]) == ["svd-lr1", "svd-lr2", "pissa-lr1"]
    assert short_labels(["adamw", "sgd-s2"]) == ["adamw", "sgd-s2"]  # nothing shared
    assert short_labels(["x-a", "x-a-b"]) == ["a", "a-b"]
    assert short_labels(["x-a", "x"]) == ["x-a", "x"]  # stripping would leave an empty label
    recs = [_run(f"study-{g}-s{s}", s, g) for g in ("svd", "kaiming") for s in (0, 1)]
    assert [g.label for g in evidence(recs).groups] == ["svd", "kaiming"]
