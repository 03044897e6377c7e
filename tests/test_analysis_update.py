"""ΔW in the tables is the update from the pretrained weight: s(B_t A_t − B_0 A_0) where the init
rewrote the base (svd/PiSSA, both_nonzero, ...), with the adapter's own product as matrix "BA";
checked on a recording made here with the svd init, against numpy on the dense matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lorascope
from lorascope import analysis
from lorascope.analysis import update
from lorascope.config import RecordConfig

from analysis_fakes import lora_run
from record_helpers import lora_params, tiny_lora_gpt2, train


def test_the_torch_free_list_is_the_inits_that_rewrite_the_base():
    from lorascope.lora.inits import INITS

    rewriting = {name for name in INITS.names() if INITS.get(name).rewrites_base}
    assert rewriting == set(update.REWRITES_BASE)


@pytest.mark.parametrize("kind, init, expected", [
    ("lorascope.LoRALinear", "svd", True), ("lorascope.LoRALinear", "kaiming_uniform", False),
    ("peft.Linear", "pissa_niter_4", True), ("peft.Linear", "olora", True),
    ("peft.Linear", "peft-default", False), ("peft.Linear", "svd", False), ("", "", False),
])
def test_which_modules_are_compensated(kind, init, expected):
    assert update.compensated(kind, init) is expected


@pytest.fixture(scope="module")
def svd_recording(tmp_path_factory):
    from lorascope.record.recorder import Recorder

    path = tmp_path_factory.mktemp("svd") / "run.h5"
    model = tiny_lora_gpt2(init="svd")
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    with Recorder(path, model, RecordConfig(base_weights=True)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=3)
    return path


def _dense(rec, name):
    m = rec.modules[name]
    A, B = np.asarray(m.A[:], np.float64), np.asarray(m.B[:], np.float64)
    return m.scaling * (B @ A), m


def test_pissa_at_step_0_has_no_update_and_ba_is_the_adapters_product(svd_recording):
    with lorascope.open(svd_recording) as rec:
        result = analysis.analyze(rec, ("stats", "spectra", "singular_values"), health=False)
        name = next(iter(rec.modules))
        BA, m = _dense(rec, name)
        assert m.init == "svd"
    dW = BA - BA[0]
    stats, sv = result.tables["stats"], result.tables["singular_values"]
    mine = stats[stats.module == name]
    d, ba = mine[mine.matrix == "dW"], mine[mine.matrix == "BA"]
    assert d.frobenius.iloc[0] == 0.0 and d.spectral_norm.iloc[0] == 0.0 and d.status.iloc[0] == "zero"
    np.testing.assert_allclose(d.frobenius, np.linalg.norm(dW, axis=(1, 2)), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(d.spectral_norm, np.linalg.norm(dW, 2, axis=(1, 2)), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(d["mean"], dW.mean(axis=(1, 2)), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ba.frobenius, np.linalg.norm(BA, axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ba.spectral_norm, np.linalg.norm(BA, 2, axis=(1, 2)), rtol=1e-6)
    # the two differ by a constant: the same updates
    np.testing.assert_allclose(d.update_size.to_numpy()[1:], ba.update_size.to_numpy()[1:], rtol=1e-9)
    last = sv[(sv.module == name) & (sv.matrix == "dW") & (sv.step == sv.step.max())].sort_values("index")
    expected = np.linalg.svd(dW[-1], compute_uv=False)[:len(last)]
    np.testing.assert_allclose(last.value, expected, rtol=1e-6, atol=1e-9 * expected[0])
    assert set(result.tables["spectra"].matrix) == {"A", "B", "dW", "BA"}


def test_an_init_with_zero_b_has_no_ba_rows():
    stats = analysis.analyze(lora_run(), ("stats",), health=False).tables["stats"]
    assert "BA" not in set(stats.matrix)
