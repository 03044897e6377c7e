"""Every number a user can type is checked against what it can mean before any work starts:
infinities and NaN, negative seeds, ranks above a layer's width, step counts whose recording
could not fit. Each case is a sentence, never a traceback or a run that trains nothing."""
from __future__ import annotations

import math

import pytest
from torch import nn

from lorascope.config import RANGES, LoraConfig, RunConfig, apply_overrides
from lorascope.errors import UsageError
from lorascope.record.schedule import EveryN, LogSpaced


@pytest.mark.parametrize("setting, value, match", [
    ("lora.rank", 2**66, r"lora.rank must be in \[1, 65536\]"),
    ("seed", -1, "seed must be in"),
    ("optim.weight_decay", math.nan, "must be a finite number"),
    ("lora.alpha", math.inf, "must be a finite number"),
    ("optim.lr", math.inf, "must be a finite number"),
    ("optim.lr", 0.0, "optim.lr must be above 0"),
    ("optim.steps", 10**11, "optim.steps must be in"),
    ("data.val_fraction", 1.0, "data.val_fraction must be in"),
    ("optim.betas", [0.9, 1.5], "optim.betas"),
    ("record.queue_size", 1, "record.queue_size must be in"),
])
def test_a_number_out_of_its_range_is_a_sentence(setting, value, match):
    with pytest.raises(UsageError, match=match):
        apply_overrides(RunConfig(), {setting: value})


def test_every_range_names_a_real_number_field_and_the_defaults_pass():
    cfg = RunConfig()
    for dotted in RANGES:
        node = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
        assert isinstance(node, (int, float)) and not isinstance(node, bool), dotted


def test_a_rank_above_a_layers_width_is_refused_before_the_model_changes():
    from lorascope.lora import add_lora

    model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 32))
    before = [m for m in model]
    with pytest.raises(UsageError, match=r"above the width of 0 \(32 -> 48, and 1 more modules\).*--rank 32"):
        add_lora(model, LoraConfig(rank=64, targets=["*"], layers=":"))
    assert list(model) == before and all(p.requires_grad for p in model.parameters())


def test_the_snapshot_count_is_arithmetic_not_a_list():
    for every, dense, total in [(1, 0, 10), (3, 4, 20), (5, 0, 4), (2, 100, 7)]:
        schedule = EveryN(every, dense)
        listed = [s for s in range(total + 1) if s in schedule]
        assert schedule.steps(total) == listed and schedule.snapshot_count(total) == len(listed)
    assert EveryN(1, 0).snapshot_count(10**9) == 10**9 + 1  # instant: no list of a billion steps
    assert LogSpaced(10, 1000).snapshot_count(1000) == len(LogSpaced(10, 1000).steps(1000))


@pytest.mark.parametrize("command", ["report", "analyze"])
def test_a_bin_count_beyond_what_a_figure_shows_is_refused_with_its_memory(tmp_path, command):
    """`report --bins 100000000` ran out of memory; it is refused with the figure it would need,
    before any file is read whole."""
    import resource

    from typer.testing import CliRunner

    from lorascope.analysis.options import MAX_BINS
    from lorascope.cli import app
    from tests.h5_fakes import write_recording

    path = write_recording(tmp_path / "rec.h5").path
    out = tmp_path / ("report" if command == "report" else "t.csv")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = CliRunner().invoke(app, [command, str(path), "-o", str(out), "--bins", "100000000"])
    assert result.exit_code == 2, result.output
    assert "GiB per module" in result.output and f"at most {MAX_BINS:,}" in result.output
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing allocated for it
    ok_out = tmp_path / ("ok" if command == "report" else "ok.csv")
    ok = CliRunner().invoke(app, [command, str(path), "-o", str(ok_out), "--bins", str(MAX_BINS)]
                            + (["--max-modules", "1"] if command == "report" else []))
    assert ok.exit_code == 0, ok.output
