"""Discovery of PEFT's LoRA layers by type: every LoraLayer is either a pair or a NotRecorded entry
with its reason, inactive adapters never count, and the optimizer's groups and the model report
see the same pairs as the Recorder."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lorascope
from lorascope.config import RecordConfig
from lorascope.errors import UsageError
from lorascope.lora.pairs import NotRecordedWarning, discover, find_lora_pairs, lora_pairs
from tests.peft_cases import CASES, TinyConvNet, llama

peft = pytest.importorskip("peft")


class Mixed(nn.Module):
    """One module of each kind PEFT can adapt, plus a grouped convolution and an attention."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        self.lin = nn.Linear(8, 6)
        self.conv = nn.Conv2d(3, 4, 3)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.mha = nn.MultiheadAttention(8, 2)


def _mixed(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's own note on the grouped convolution
        return peft.get_peft_model(Mixed(), peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["emb", "lin", "conv", "grouped", "mha"], **kwargs))


def _reasons(found) -> dict[str, str]:
    return {n.module.removeprefix("base_model.model."): n.reason for n in found.not_recorded}


def test_every_layer_type_is_a_pair_or_named_with_its_reason():
    found = discover(_mixed())
    pairs = {n.removeprefix("base_model.model."): p for n, p in found.pairs.items()}
    assert {n: p.kind for n, p in pairs.items()} == {
        "emb": "peft.Embedding", "lin": "peft.Linear", "conv": "peft.Conv2d",
        # PEFT adapts MultiheadAttention's out_proj as a LoRA Linear of its own
        "mha.base_layer.out_proj": "peft.Linear",
    }
    assert (pairs["emb"].out_features, pairs["emb"].in_features) == (20, 8)
    assert (pairs["conv"].out_features, pairs["conv"].in_features, pairs["conv"].weight_shape) == (4, 27, (4, 3, 3, 3))
    reasons = _reasons(found)
    assert set(reasons) == {"grouped", "mha"}
    assert "grouped convolution" in reasons["grouped"] and "not verified" in reasons["mha"]


def test_pair_matrices_are_peft_factors_in_b_at_a_orientation():
    model = _mixed(init_lora_weights=False)
    found = discover(model)
    for name, pair in found.pairs.items():
        A, B = pair.matrices()
        assert A.shape == pair.a_shape and B.shape == pair.b_shape
        layer = model.get_submodule(name)
        delta = layer.get_delta_weight("default").detach()
        delta = delta.flatten(1) if delta.ndim > 2 else delta  # a kernel as (out, in·k·k)
        torch.testing.assert_close(pair.scaling * B @ A, delta)
        assert pair.base_weight().shape == delta.shape


def test_only_the_active_adapter_counts():
    model = CASES["two_adapters"]().model
    pairs = lora_pairs(model)
    assert {p.adapter for p in pairs.values()} == {"second"}
    assert not any(n.endswith("q_proj") for n in pairs)  # only "default" adapts q_proj: inactive
    model.set_adapter("default")
    assert {(p.adapter, p.rank) for p in lora_pairs(model).values()} == {("default", 4)}


def test_several_active_adapters_record_the_first_and_name_the_others():
    model = CASES["two_adapters"]().model
    model.base_model.set_adapter(["default", "second"])
    found = discover(model)
    v_proj = found.pairs["base_model.model.model.layers.0.self_attn.v_proj"]
    assert v_proj.adapter == "default"
    assert any("'second' is active beside 'default'" in n.reason for n in found.not_recorded)


def test_variants_merged_adapters_and_unknown_subclasses_are_not_guessed_at():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alora = peft.get_peft_model(Mixed(), peft.LoraConfig(r=2, target_modules=["lin"], alora_invocation_tokens=[1]))
    assert "ALoraLinearVariant" in _reasons(discover(alora))["lin"]
    merged = _mixed()
    merged.get_submodule("base_model.model.lin").merge()
    assert "merged" in _reasons(discover(merged))["lin"]

    class Unverified(peft.tuners.lora.Linear):  # e.g. torchao's subclass, whose base is quantised
        pass

    model = _mixed()
    model.get_submodule("base_model.model.lin").__class__ = Unverified
    assert "not verified" in _reasons(discover(model))["lin"]


def test_peft_setup_and_modules_to_save():
    model = peft.get_peft_model(TinyConvNet(), peft.LoraConfig(
        r=2, target_modules=["conv1"], modules_to_save=["head"], use_rslora=True))
    found = discover(model)
    assert _reasons(found) == {"head": "modules_to_save: a full copy trained beside the adapters, not a LoRA pair"}
    setup = found.peft
    assert setup["active_adapters"] == ["default"] and setup["modules_to_save"] == ["base_model.model.head"]
    config = setup["adapters"]["default"]
    assert config["use_rslora"] is True and config["r"] == 2 and config["target_modules"] == ["conv1"]
    json.dumps(setup)
    assert found.pairs["base_model.model.conv1"].init == "peft-default"
    assert found.pairs["base_model.model.conv1"].scaling == pytest.approx(8 / np.sqrt(2))


def test_quantised_layers_are_found_beside_full_precision_ones():
    pytest.importorskip("bitsandbytes")
    pairs = lora_pairs(CASES["mixed_4bit"]().model)
    kinds = [p.kind for p in pairs.values()]
    assert kinds == ["peft.bnb.Linear4bit"] * 4 + ["peft.Linear"]  # the 4-bit layers are not dropped
    assert pairs["base_model.model.lm_head"].out_features == 128
    assert all(p.base_weight().shape == (p.out_features, p.in_features) for p in pairs.values())


def test_recorder_warns_once_and_stores_what_it_left_out(tmp_path):
    from lorascope.record import Recorder

    model = _mixed()
    with pytest.warns(NotRecordedWarning) as caught:
        rec = Recorder(tmp_path / "m.h5", model, RecordConfig(every=1))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "base_model.model.grouped" in message and "MultiheadAttention" in message
    rec.start()
    rec.close()
    with lorascope.open(tmp_path / "m.h5") as r:
        assert {n["module"] for n in r.not_recorded} == {"base_model.model.grouped", "base_model.model.mha"}
        assert r.config["peft"]["adapters"]["default"]["r"] == 2  # config comparisons see it
        from lorascope.analysis import describe

        shown = describe(r, health=False)
    assert "not recorded 2 layer(s)" in shown
    grouped = next(line for line in shown.splitlines() if line.strip().startswith("base_model.model.grouped"))
    assert "groups=2" in grouped  # the reason, as the warning gave it


def test_a_malformed_peft_or_not_recorded_attribute_is_one_sentence(tmp_path):
    import json

    import h5py

    from lorascope.errors import RecordingError
    from lorascope.record import Recorder

    path = tmp_path / "m.h5"
    with pytest.warns(NotRecordedWarning):
        rec = Recorder(path, _mixed(), RecordConfig(every=1))
    rec.start()
    rec.close()
    for attr, value in (("not_recorded", ["just a string"]), ("peft", {"adapters": {"default": 3}}),
                        ("peft", {"active_adapters": "default"})):
        with h5py.File(path, "r+") as f:
            keep = f.attrs[attr]
            f.attrs[attr] = json.dumps(value)
        with pytest.raises(RecordingError, match=f"its {attr} attribute"):
            lorascope.open(path)
        with h5py.File(path, "r+") as f:
            f.attrs[attr] = keep


def test_a_model_whose_lora_layers_are_all_unrecordable_says_so():
    model = peft.get_peft_model(Mixed(), peft.LoraConfig(r=2, target_modules=["grouped"]))
    with pytest.raises(UsageError, match="groups=2"):
        find_lora_pairs(model)


def test_optimizer_groups_and_model_report_use_the_same_pairs():
    from lorascope.train.model_report import model_report
    from lorascope.train.optim import lora_param_groups

    model = CASES["dora"]().model
    pairs = lora_pairs(model)
    groups = {g["name"]: g["params"] for g in lora_param_groups(model, 1e-3)}
    assert {id(p) for p in groups["A"]} == {id(p.A) for p in pairs.values()}
    assert {id(p) for p in groups["B"]} == {id(p.B) for p in pairs.values()}
    # the embedding's A is PEFT's lora_embedding_B, in the role it has in ΔW = B·A
    emb = model.get_submodule("base_model.model.model.embed_tokens")
    assert any(p is emb.lora_embedding_B["default"] for p in groups["A"])
    assert {id(p) for p in groups["other"]} == {id(p.magnitude) for p in pairs.values()}
    report = model_report(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.lora_params == trainable  # A, B and the magnitudes: everything that trains
    assert len(report.lora_modules) == len(pairs)


def test_a_model_without_lora_has_no_pairs_and_no_peft_setup():
    found = discover(llama())
    assert found.pairs == {} and found.peft == {} and found.not_recorded == []


def test_two_peft_runs_side_by_side_show_their_config_difference(tmp_path):
    from lorascope.record import Recorder
    from lorascope.analysis.overview import runs_table

    paths = []
    for name, dora in (("lora", False), ("dora", True)):
        model = peft.get_peft_model(TinyConvNet(), peft.LoraConfig(r=2, target_modules=["conv1"], use_dora=dora))
        paths.append(tmp_path / f"{name}.h5")
        with Recorder(paths[-1], model, RecordConfig(every=1)) as rec:
            rec.start()
    recs = lorascope.open_many(paths)
    try:
        table = runs_table(recs)
    finally:
        for rec in recs:
            rec.close()
    assert table.loc["peft.adapters.default.use_dora"].tolist() == [False, True]
    assert "peft.adapters.default.r" not in table.index  # the same in both: not a difference
