"""The gradient noise within a step (`lorascope.analysis.grad_noise` and the `grad_noise` table):
known answers (identical micro-gradients, independent Gaussian ones), a slow per-step numpy
reference on random data with steps of different K, an Inf and a zero step, and a tiny fp16
recording with four micro-steps per step read back with h5py."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lorascope
from lorascope import analysis
from lorascope.analysis import grad_noise as gn
from lorascope.analysis.gradient_tables import GRAD_NOISE_COLUMNS, NO_ACCUMULATION, NO_GRADIENTS
from lorascope.config import RecordConfig
from lorascope.errors import UsageError
from lorascope.record import Recorder
from lorascope.train.amp import resolve_precision
from lorascope.train.loop import train_loop

from analysis_fakes import lora_run, with_gradients
from amp_helpers import OverflowAt, lm_batches
from record_helpers import tiny_lora_gpt2


def reference(G: np.ndarray, steps: np.ndarray) -> dict[int, dict[str, float]]:
    """The obvious per-step computation, one step at a time, in float64."""
    out = {}
    for s in np.unique(steps):
        X = G[steps == s].reshape(int((steps == s).sum()), -1).astype(np.float64)
        K = len(X)
        if K < 2:
            continue
        if not np.isfinite(X).all():
            out[int(s)] = {"K": K, "signal": np.nan, "noise": np.nan, "ratio": np.nan, "cos": np.nan,
                           "status": "nonfinite"}
            continue
        mean = X.mean(axis=0)
        signal = float(mean @ mean)
        noise = float(X.var(axis=0, ddof=1).sum())
        cosines = []
        for k in range(K):
            rest = np.delete(X, k, axis=0).mean(axis=0)
            denom = np.linalg.norm(X[k]) * np.linalg.norm(rest)
            if denom > 0:
                cosines.append(X[k] @ rest / denom)
        out[int(s)] = {"K": K, "signal": signal, "noise": noise,
                       "ratio": noise / signal if signal > 0 else np.nan,
                       "cos": float(np.mean(cosines)) if cosines else np.nan,
                       "status": "ok" if signal > 0 else "zero_signal"}
    return out


def grouped(G: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    groups = gn.step_groups(steps)
    return groups.steps, {"K": groups.counts, **gn.within_step(G[groups.rows], groups.counts)}


# --- known answers ---

@pytest.mark.parametrize("K", [2, 3, 4, 7])
def test_identical_micro_gradients_have_no_noise(K):
    g = np.random.default_rng(K).normal(size=(5, 8, 16)).astype(np.float32)  # 5 steps
    G = np.repeat(g, K, axis=0)  # each step's K micro-gradients are the same
    got = gn.within_step(G, np.full(5, K))
    assert (got["noise"] == 0).all() and (got["ratio"] == 0).all()
    np.testing.assert_allclose(got["loo_cosine"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(got["signal"], (g.astype(np.float64) ** 2).sum(axis=(1, 2)), rtol=1e-12)
    assert list(got["status"]) == ["ok"] * 5


@pytest.mark.parametrize("K", [2, 4, 8])
def test_independent_gaussian_gradients_give_the_variance_and_a_ratio_of_k(K):
    rng = np.random.default_rng(10 + K)
    S, n, sigma = 40, 4096, 0.3
    G = rng.normal(0.0, sigma, size=(S * K, 16, n // 16))
    got = gn.within_step(G, np.full(S, K))
    # noise·(K−1)/σ² is χ² with n(K−1) degrees of freedom per step: relative sd √(2/(n(K−1))),
    # of the mean over S steps √(2/(S·n(K−1))); ‖ḡ‖²·K/σ² is χ²_n
    sd = np.sqrt(2 / (n * (K - 1)))
    np.testing.assert_allclose(got["noise"] / (n * sigma**2), 1.0, atol=5 * sd)
    assert np.mean(got["noise"]) / (n * sigma**2) == pytest.approx(1.0, abs=5 * sd / np.sqrt(S))
    ratio_sd = K * np.sqrt(2 / n + 2 / (n * (K - 1)))  # the ratio of the two, to first order
    assert np.mean(got["ratio"]) == pytest.approx(K, abs=5 * ratio_sd / np.sqrt(S))
    # with no common direction a micro-gradient agrees with the rest only by chance: each cosine
    # ~ N(0, 1/n), a step's mean no wider (its K cosines may move together: K = 2 gives one twice)
    assert abs(np.mean(got["loo_cosine"])) < 5 / np.sqrt(n * S)


def test_a_common_direction_lowers_the_ratio_below_k():
    rng = np.random.default_rng(3)
    K, S, n = 4, 20, 2048
    mu = rng.normal(size=n)
    G = mu + rng.normal(size=(S, K, n))  # noise ≈ n (unit variance per entry), E‖ḡ‖² = ‖μ‖² + n/K
    got = gn.within_step(G.reshape(S * K, 8, n // 8), np.full(S, K))
    m2 = mu @ mu
    assert np.mean(got["ratio"]) == pytest.approx(n / (m2 + n / K), rel=0.02)
    # g_k·(mean of the rest) ≈ ‖μ‖², ‖g_k‖² ≈ ‖μ‖² + n, ‖rest‖² ≈ ‖μ‖² + n/(K−1)
    want = m2 / np.sqrt((m2 + n) * (m2 + n / (K - 1)))
    assert np.mean(got["loo_cosine"]) == pytest.approx(want, rel=0.02)
    assert np.mean(got["ratio"]) < K


# --- against the slow per-step reference ---

def random_gradients(seed: int = 0):
    """Rows of steps 1–6, out of order as a resumed file never is but a caller's array may be:
    step 6 has K = 2 (the end of an epoch), step 4 an Inf in its third micro-step, step 1 all
    zeros (A while B = 0), step 5 only one micro-step (no row)."""
    rng = np.random.default_rng(seed)
    counts = {1: 4, 2: 4, 3: 4, 4: 4, 5: 1, 6: 2}
    steps = np.concatenate([np.full(k, s) for s, k in counts.items()])
    G = (rng.normal(size=(len(steps), 6, 10)) + rng.normal(size=(6, 10))).astype(np.float32)
    G[steps == 1] = 0.0
    G[np.flatnonzero(steps == 4)[2], 3, 5] = np.inf
    perm = rng.permutation(len(steps))
    return G[perm], steps[perm]


def test_every_step_matches_the_slow_reference():
    G, steps = random_gradients()
    want = reference(G, steps)
    got_steps, got = grouped(G, steps)
    assert got_steps.tolist() == sorted(want) == [1, 2, 3, 4, 6]
    for i, s in enumerate(got_steps):
        w = want[int(s)]
        assert got["K"][i] == w["K"] and got["status"][i] == w["status"]
        for ours, theirs in (("signal", "signal"), ("noise", "noise"), ("ratio", "ratio"), ("loo_cosine", "cos")):
            np.testing.assert_allclose(got[ours][i], w[theirs], rtol=1e-10, equal_nan=True, err_msg=f"{ours} at step {s}")
    assert [got["status"][i] for i in range(5)] == ["zero_signal", "ok", "ok", "nonfinite", "ok"]


def test_blocks_of_steps_give_the_numbers_of_one_pass():
    G, steps = random_gradients(1)
    groups = gn.step_groups(steps)
    whole = gn.within_step(G[groups.rows], groups.counts)
    blocks = list(groups.blocks(values_per_row=60, budget=60 * 5))  # about five rows a block
    assert len(blocks) > 2 and all(c.sum() <= 8 for _, c in blocks)
    parts = [gn.within_step(G[rows], counts) for rows, counts in blocks]
    for key in ("signal", "noise", "ratio", "loo_cosine"):
        np.testing.assert_allclose(np.concatenate([p[key] for p in parts]), whole[key], rtol=1e-13, equal_nan=True)


def test_picked_steps_keep_their_rows():
    _, steps = random_gradients(2)
    groups = gn.step_groups(steps).pick(np.array([0, 4]))
    assert groups.steps.tolist() == [1, 6] and groups.counts.tolist() == [4, 2]
    assert (steps[groups.rows] == np.repeat([1, 6], [4, 2])).all()


def test_counts_that_do_not_describe_the_rows_are_refused():
    G = np.zeros((6, 2, 2))
    with pytest.raises(UsageError, match="step_groups"):
        gn.within_step(G, [3, 2])
    with pytest.raises(UsageError, match="at least 2"):
        gn.within_step(G, [5, 1])


# --- the table ---

def test_the_table_has_a_row_per_module_matrix_and_accumulated_step():
    rec = with_gradients(lora_run(), {1: 3, 2: 3, 3: 3, 4: 1})
    result = analysis.analyze(rec, ("grad_noise",), health=False)
    table = result.tables["grad_noise"]
    assert list(table.columns) == list(GRAD_NOISE_COLUMNS) and not result.notes
    assert len(table) == 2 * 2 * 3  # modules × matrices × steps with K ≥ 2
    assert set(table.matrix) == {"A", "B"} and sorted(set(table.step)) == [1, 2, 3]
    name = next(iter(rec.modules))
    rows = table[(table.module == name) & (table.matrix == "B")]
    want = reference(rec.modules[name].grad_B, rec.grad_steps)
    np.testing.assert_allclose(rows.noise, [want[s]["noise"] for s in (1, 2, 3)], rtol=1e-10)
    np.testing.assert_allclose(rows.ratio, [want[s]["ratio"] for s in (1, 2, 3)], rtol=1e-10)
    assert (rows.micro_steps == 3).all() and (rows.status == "ok").all()
    # and the convenience function gives the same table
    assert analysis.grad_noise_table(rec).equals(table)


def test_a_quick_look_reads_evenly_spaced_steps():
    rec = with_gradients(lora_run(), {s: 2 for s in range(1, 11)})
    full = analysis.analyze(rec, ("grad_noise",), health=False).tables["grad_noise"]
    quick = analysis.analyze(rec, ("grad_noise",), analysis.Options(read_steps=4), health=False).tables["grad_noise"]
    assert sorted(set(quick.step)) == [1, 4, 7, 10]
    merged = quick.merge(full, on=["module", "matrix", "step"], suffixes=("", "_full"))
    np.testing.assert_array_equal(merged.noise, merged.noise_full)


@pytest.mark.parametrize("K_per_step, why", [(None, NO_GRADIENTS), ({1: 1, 2: 1, 3: 1}, NO_ACCUMULATION)])
def test_no_rows_and_a_note_when_no_step_has_two_micro_steps(K_per_step, why):
    rec = lora_run("plain")
    if K_per_step is not None:
        with_gradients(rec, K_per_step)
    result = analysis.analyze(rec, ("grad_noise",), health=False)
    assert len(result.tables["grad_noise"]) == 0
    assert list(result.tables["grad_noise"].columns) == list(GRAD_NOISE_COLUMNS)
    assert result.notes == [f"grad_noise: {why} in 2 modules of run 'plain'"]


# --- end to end: a tiny fp16 run with four micro-steps per step ---

STEPS, ACCUM = 5, 4
OVERFLOW_CALL = 3 * ACCUM + 2  # the second micro-batch of step 4: that step is skipped


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """tiny-gpt2 with B = 0 at init (A's first gradient is zero), trained in fp16 with an
    injected overflow, four micro-steps per step, every gradient recorded."""
    path = tmp_path_factory.mktemp("noise") / "accum.h5"
    device = torch.device("cpu")
    model = tiny_lora_gpt2(init="kaiming_uniform").train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with Recorder(path, model, RecordConfig(every=1, grads=True), run_name="accum", total_steps=STEPS) as rec:
        rec.start(optimizer)
        train_loop(model=OverflowAt(model, {OVERFLOW_CALL}), optimizer=optimizer, scheduler=None,
                   train_data=lm_batches(STEPS * ACCUM), device=device, precision=resolve_precision("fp16", device),
                   total_steps=STEPS, grad_accum=ACCUM, max_grad_norm=1.0, hooks=rec)
    with lorascope.open(path) as rec:
        table = analysis.analyze(rec, ("grad_noise",), health=False).tables["grad_noise"]
    return path, table


def test_a_recording_matches_the_noise_computed_from_its_datasets(accumulated):
    path, table = accumulated
    with h5py.File(path, "r") as f:
        steps = f["grad_snapshots/step"][:]
        assert np.bincount(steps).tolist() == [0] + [ACCUM] * STEPS
        names = [n for n in f["modules"]]
        checked = 0
        for name in names:
            for m in ("A", "B"):
                want = reference(f["modules"][name][f"grad_{m}"][:], steps)
                rows = table[(table.module == name) & (table.matrix == m)].set_index("step")
                assert sorted(rows.index) == sorted(want) == list(range(1, STEPS + 1))
                for s, w in want.items():
                    assert rows.status[s] == w["status"] and rows.micro_steps[s] == ACCUM
                    for ours, theirs in (("signal", "signal"), ("noise", "noise"), ("ratio", "ratio"),
                                         ("loo_cosine", "cos")):
                        np.testing.assert_allclose(rows[ours][s], w[theirs], rtol=1e-9, equal_nan=True)
                checked += 1
    assert checked == 2 * len(names) > 0


def test_a_recording_says_which_steps_have_no_ratio(accumulated):
    _, table = accumulated
    a = table[table.matrix == "A"].groupby("step").status.agg(set)
    b = table[table.matrix == "B"].groupby("step").status.agg(set)
    assert a[1] == {"zero_signal"}  # B = 0 at step 1: A's gradient is exactly zero
    assert a[4] == b[4] == {"nonfinite"}  # the overflowed step fp16 skipped
    assert a[2] == a[3] == a[5] == b[1] == b[2] == b[5] == {"ok"}
    ok = table[table.status == "ok"]
    assert (ok.noise > 0).all() and (ok.ratio > 0).all() and ok.loo_cosine.between(-1, 1).all()
    assert table[table.status != "ok"].ratio.isna().all()
