from __future__ import annotations

import json

import pytest

from lorascope.config import (
    RunConfig,
    apply_overrides,
    build_config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_settings,
)
from lorascope.errors import UsageError


def test_toml_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "x"\nseed = 3\n[lora]\nrank = 4\ntargets = ["q", "v"]\n[optim]\nlr = 1e-3\nbetas = [0.9, 0.99, 0.999]\n')
    cfg = load_config(path)
    assert (cfg.name, cfg.seed, cfg.lora.rank, cfg.lora.targets, cfg.optim.lr) == ("x", 3, 4, ["q", "v"], 1e-3)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[lora]\nrnak = 4\n")
    with pytest.raises(UsageError, match=r"lora\.rnak.*valid names are: rank"):
        load_config(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lora.rank": 0}, "lora.rank"),
        ({"lora.alpha": -1}, "lora.alpha"),
        ({"optim.lr": 0}, "optim.lr"),
        ({"optim.grad_accum": 0}, "grad_accum"),
        ({"lora.rank": "four"}, "whole number"),
        ({"lora.rank": 2.5}, "whole number"),
        ({"optim.lr": "fast"}, "takes a number"),
        ({"record.dtype": "int8"}, "record.dtype"),
        ({"amp": "fp8"}, "amp must be"),
        ({"optim.nope": 1}, "unknown setting"),
    ],
)
def test_bad_values_get_a_sentence(overrides, message):
    with pytest.raises(UsageError, match=message):
        apply_overrides(RunConfig(), overrides)


def test_overrides_coerce_cli_strings():
    cfg = apply_overrides(RunConfig(), {"lora.rank": "16", "optim.lr": "1e-4", "lora.rslora": "true", "lora.targets": "q,v"})
    assert (cfg.lora.rank, cfg.optim.lr, cfg.lora.rslora, cfg.lora.targets) == (16, 1e-4, True, ["q", "v"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora\nrank=")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(bad)


def test_default_run_name_and_output():
    cfg = RunConfig()
    assert cfg.output_path().parent.name == "recordings"
    assert cfg.output_path().name == cfg.run_name() + ".h5"


def test_settings_are_key_value_pairs():
    assert parse_settings(["optim.lr=3e-4", " lora.rank = 4 ", "name=a=b"]) == {
        "optim.lr": "3e-4", "lora.rank": "4", "name": "a=b"}
    for bad in ("novalue", "=3"):
        with pytest.raises(UsageError, match="key=value"):
            parse_settings([bad])


def test_build_config_layers_base_settings_then_fields():
    base = RunConfig(seed=5)
    cfg = build_config(base, ["lora.rank=4", "optim.lr=1e-3"], {"lora.rank": 16, "optim.steps": None})
    assert cfg.seed == 5 and cfg.optim.lr == 1e-3
    assert cfg.lora.rank == 16  # a flag wins over a --set pair
    assert cfg.optim.steps == base.optim.steps  # None: the flag was not given
    assert build_config(base) is base
    with pytest.raises(UsageError, match="unknown setting"):
        build_config(base, ["lora.rnak=4"])
