"""Every evaluation records how many held-out examples it covered (`eval_examples`), and the runs
table and the seed table show it beside the eval metrics. Runs of `runs.session.run` on tiny-bert
and the embedded rotten-tomatoes reviews (one review per example), counted from the split's size."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import lorascope
from lorascope.analysis.overview import eval_columns, runs_table
from lorascope.analysis.seeds import seed_summary
from lorascope.config import RunConfig, apply_overrides
from lorascope.runs.session import run

RECORDS, VAL_FRACTION, BATCH = 80, 0.25, 4
HELD_OUT = 20  # 25% of 80 reviews


def _run(tmp_path, name: str, eval_batches: int):
    cfg = apply_overrides(RunConfig(), {
        "model.name": "tiny-bert", "data.source": "rotten_tomatoes", "data.task": "classification",
        "data.max_examples": RECORDS, "data.val_fraction": VAL_FRACTION, "data.max_length": 24,
        "data.batch_size": BATCH, "optim.steps": 4, "eval_every": 2, "eval_batches": eval_batches,
        "lora.targets": ["attn"], "device": "cpu", "output": str(tmp_path / f"{name}.h5"),
    })
    return run(cfg, log=lambda line: None)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_examples")
    return {eval_batches: _run(tmp, f"b{eval_batches}", eval_batches).recording for eval_batches in (3, 0)}


@pytest.mark.parametrize("eval_batches, expected", [(3, 3 * BATCH), (0, HELD_OUT)])
def test_every_evaluation_records_the_examples_it_saw(recordings, eval_batches, expected):
    with lorascope.open(recordings[eval_batches]) as rec:
        s = rec.scalars
    evals = s[s["eval_accuracy"].notna()]
    assert evals["step"].tolist() == [2, 4]  # the one at step 2 and the final one
    assert evals["eval_examples"].tolist() == [expected, expected]
    # accuracy is a fraction of those examples: a whole number of them
    counts = evals["eval_accuracy"].to_numpy() * expected
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)


def test_the_runs_table_shows_the_eval_set_size_beside_the_metrics(recordings):
    with lorascope.open(recordings[3]) as a, lorascope.open(recordings[0]) as b:
        assert "eval_examples" not in eval_columns(a.scalar_columns)  # a count, not a metric
        table = runs_table([a, b])
    rows = list(table.index)
    assert "final eval_examples" not in rows
    assert rows.index("eval examples") == max(i for i, r in enumerate(rows) if r.startswith("final eval_")) + 1
    assert table.loc["eval examples"].tolist() == [3 * BATCH, HELD_OUT]


def test_the_seed_table_shows_the_eval_set_size():
    def rec(seed: int, accuracy: float):
        scalars = {"step": np.array([1, 2]), "loss": np.array([1.0, 0.5]),
                   "eval_accuracy": np.array([np.nan, accuracy]), "eval_examples": np.array([np.nan, 256.0])}
        config = {"seed": seed, "name": f"c-s{seed}", "output": f"/x/c-s{seed}.h5"}
        return SimpleNamespace(run_name=f"c-s{seed}", config=config, scalar_columns=scalars,
                               times=np.array([0.0, 1.0]))

    summary = seed_summary([rec(0, 0.7), rec(1, 0.8)]).set_index("quantity")
    assert summary.loc["eval examples", "mean"] == 256 and summary.loc["eval examples", "n"] == 2
    assert "final eval_examples" not in summary.index
    quantities = list(summary.index)
    assert quantities.index("eval examples") == quantities.index("final eval_accuracy") + 1


def test_info_shows_the_eval_set_size(recordings):
    from lorascope.analysis.overview import describe

    with lorascope.open(recordings[3]) as rec:
        text = describe(rec, health=False)
    assert f"eval examples            {3 * BATCH} held-out examples in the last evaluation" in text


def test_classification_metrics_against_a_count_by_hand():
    import torch

    from lorascope.train.evaluate import classification_metrics

    labels = torch.tensor([1, 1, 1, 0, 1, 0, 2, 1])  # label 1 holds 5 of 8
    predictions = torch.tensor([1, 0, 1, 0, 2, 0, 2, 1])
    got = classification_metrics(predictions, labels, num_labels=3)
    assert got["majority"] == 5 / 8 and got["accuracy"] == 6 / 8
    # a model that answers the majority label to everything scores exactly that share
    assert classification_metrics(torch.ones(8, dtype=torch.long), labels, 3)["accuracy"] == got["majority"]


def test_every_evaluation_records_its_majority_label_share(recordings):
    """The share of the most common label among the evaluated reviews, counted here from the
    split the run used (the loaders' order is fixed: the first 3 batches are the same reviews)."""
    from lorascope.config import config_from_dict
    from lorascope.data.bundle import build_data
    from lorascope.models.loaders import load_model

    with lorascope.open(recordings[3]) as rec:
        s, cfg = rec.scalars, config_from_dict(rec.config)
    _, tokenizer = load_model(cfg.model, "classification", 2)
    data = build_data(cfg.data, tokenizer, seed=cfg.seed)
    labels = np.concatenate([b["labels"].numpy() for _, b in zip(range(3), data.val)])
    want = np.bincount(labels).max() / len(labels)
    evals = s[s["eval_accuracy"].notna()]
    np.testing.assert_allclose(evals["eval_majority"].to_numpy(), [want, want])
    with lorascope.open(recordings[3]) as a:
        assert "eval_majority" not in eval_columns(a.scalar_columns)  # about the eval set, not a metric
        assert runs_table([a]).loc["eval majority"].tolist() == [want]

