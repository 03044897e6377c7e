"""The benchmark suite runs on tiny configurations and returns sane structures. Nothing here
asserts on wall time: speed is what the benchmarks measure, not what the tests check."""
from __future__ import annotations

import os

import pytest

import lorascope

from benchmarks.common import (
    Samples, Segment, folder_bytes, format_bytes, format_table, interleave, median, paired_ratio, random_batches,
    ratio,
)
from lorascope.errors import UsageError
from lorascope.registry import Registry

TINY_LORA_VALUES = 16_384  # 2 blocks × (c_attn 2048 + attn.c_proj 1024 + c_fc 2560 + mlp.c_proj 2560), rank 16


# --- the timing helpers ---------------------------------------------------------------------

def test_interleave_rotates_the_order_and_keeps_every_segment():
    calls = []

    def contender(name, seconds):
        def turn():
            calls.append(name)
            return Segment([seconds, 2 * seconds], extra={"bytes": len(calls)})
        return turn

    result = interleave({"a": contender("a", 1.0), "b": contender("b", 3.0), "c": contender("c", 5.0)}, repeats=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert list(result) == ["a", "b", "c"]
    assert result["b"].step_seconds == [3.0, 6.0] * 3
    assert result["b"].median_step == 4.5
    assert result["c"].last("bytes") == 7  # c's last turn was the 7th call
    with pytest.raises(ValueError, match="repeats"):
        interleave({"a": contender("a", 1.0)}, repeats=0)


def test_median_ratio_and_formatting_known_values():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) != median([])  # NaN: nothing measured is not zero
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) != ratio(1.0, 0.0)
    assert format_bytes(512) == "512 B"
    assert format_bytes(9 * 2**20) == "9.0 MiB"
    assert format_table([{"x": "1", "long name": "2"}]) == "| x | long name |\n|---|-----------|\n| 1 | 2         |"


def test_paired_ratio_compares_turns_of_the_same_repetition():
    # load doubles in repetition 2: overall medians would mix it in, per-repetition ratios do not
    a = Samples("a", [Segment([1.1, 1.1]), Segment([2.2, 2.2]), Segment([1.2, 1.2])])
    b = Samples("b", [Segment([1.0, 1.0]), Segment([2.0, 2.0]), Segment([1.0, 1.0])])
    mid, low, high = paired_ratio(a, b)
    assert (round(mid, 12), round(low, 12), round(high, 12)) == (1.1, 1.1, 1.2)
    assert paired_ratio(Samples("a"), b)[0] != paired_ratio(Samples("a"), b)[0]  # NaN


def test_folder_bytes_counts_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b").write_bytes(b"y" * 32)
    assert folder_bytes(tmp_path) == 42
    assert folder_bytes(tmp_path / "a") == 10


def test_random_batches_are_seeded_causal_lm_batches():
    first, second = random_batches(2, 8, 50, batch_size=3), random_batches(2, 8, 50, batch_size=3)
    assert first[0]["input_ids"].shape == (3, 8)
    assert (first[1]["input_ids"] == second[1]["input_ids"]).all()
    assert (first[0]["labels"] == first[0]["input_ids"]).all() and first[0]["attention_mask"].all()
    assert int(first[0]["input_ids"].max()) < 50


# --- the benchmarks on a tiny model ---------------------------------------------------------

def test_peers_overhead_on_a_tiny_model():
    from benchmarks.peers_overhead import peers_rows, run_peers

    result = run_peers("tiny-gpt2", steps=3, repeats=1, contenders=["none", "lorascope", "tensorboard"])
    assert list(result.samples) == ["none", "lorascope", "tensorboard"]
    for samples in result.samples.values():
        assert len(samples.step_seconds) == 2  # 3 steps, the first one not counted
        assert all(t > 0 for t in samples.step_seconds)
    # 4 snapshots (step 0 and 3 steps) of 16,384 fp32 values, plus the file's fixed part
    assert result.samples["lorascope"].last("bytes") > 4 * TINY_LORA_VALUES * 4
    assert result.samples["tensorboard"].last("bytes") > 0
    rows = {row["contender"]: row for row in peers_rows(result)}
    assert rows["none"]["ratio to none"] == "1.000"
    assert "16,384 values" in rows["lorascope"]["kept"]
    assert rows["none"]["in loop hooks per step"] == "0.0 ms (0.00%)"
    held = result.samples["lorascope"].last("hook_seconds")
    assert len(held) == 2 and all(t > 0 for t in held)
    with pytest.raises(ValueError, match="warmup"):
        run_peers("tiny-gpt2", steps=1, repeats=1)


@pytest.mark.slow
def test_wandb_contender_runs_offline(monkeypatch):
    from benchmarks.peers_overhead import run_peers, wandb_available

    if wandb_available():
        pytest.skip(wandb_available())
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = run_peers("tiny-gpt2", steps=2, repeats=1, contenders=["wandb"])
    assert result.samples["wandb"].last("bytes") > 0
    assert "frozen base included" in result.samples["wandb"].last("kept")


def test_unknown_contender_or_model_is_a_usage_error():
    from benchmarks.peers_overhead import run_peers
    from benchmarks.workloads import available_workloads

    with pytest.raises(UsageError, match="choose one of"):
        run_peers("tiny-gpt2", steps=2, repeats=1, contenders=["none", "mlflow"])
    with pytest.raises(UsageError, match="gpt2-small"):
        available_workloads(["gpt5"])


def test_throughput_on_a_tiny_model():
    from benchmarks.throughput import Settings, run_throughput, throughput_rows

    result = run_throughput("tiny-gpt2", Settings(steps=2, grad_accum=2), repeats=1)
    assert result.tokens_per_step == 2 * 64  # batch 1 × the tiny model's 64 positions × accumulation 2
    assert set(result.samples) == {"lorascope", "peft+Trainer"}
    for samples in result.samples.values():
        assert len(samples.step_seconds) == 1 and samples.step_seconds[0] > 0
    rows = {row["trainer"]: row for row in throughput_rows(result)}
    assert rows["peft+Trainer"]["speed vs Trainer"] == "1.000"
    assert float(rows["lorascope"]["tokens/s"]) > 0


def test_both_trainers_adapt_the_same_matrices():
    from benchmarks.workloads import build_workload
    from lorascope.record import find_lora_pairs

    ours = find_lora_pairs(build_workload("tiny-gpt2", lora="lorascope").model)
    peft = find_lora_pairs(build_workload("tiny-gpt2", lora="peft").model)
    shapes = lambda pairs: sorted((tuple(p.A.shape), tuple(p.B.shape), p.scaling) for p in pairs.values())  # noqa: E731
    assert len(ours) == 8 and shapes(ours) == shapes(peft)


def test_recording_size_is_the_raw_bytes_plus_little():
    from benchmarks.recording_size import measure_sizes, size_rows

    (result,) = measure_sizes("tiny-gpt2", dtypes=("float32",), few=2, many=4)
    assert result.values == TINY_LORA_VALUES
    assert result.raw == TINY_LORA_VALUES * 4
    assert result.raw <= result.per_snapshot < 1.1 * result.raw
    assert size_rows([result])[0]["storage"] == "float32"


def test_startup_times_fresh_interpreters_of_this_checkout(tmp_path):
    from benchmarks.startup import ROOT, cpu_seconds, make_recording, run_startup, startup_rows

    samples = run_startup(ROOT, repeats=2, cases=["python -c pass", "lorascope --help"])
    assert list(samples) == ["python -c pass", "lorascope --help"]
    assert all(len(s.step_seconds) == 2 and min(s.step_seconds) > 0 for s in samples.values())
    assert all(0 < cpu for s in samples.values() for cpu in cpu_seconds(s))
    rows = {row["command"]: row for row in startup_rows(samples)}
    assert rows["lorascope --help"]["target"] == "< 0.3 s" and rows["python -c pass"]["target"] == ""
    with lorascope.open(make_recording(tmp_path, snapshots=3)) as rec:
        assert list(rec.steps) == [0, 1, 2, 3] and len(rec.modules) == 8 and rec.status == "complete"


def test_a_failing_command_line_is_an_error_not_a_time(monkeypatch):
    from benchmarks import startup

    monkeypatch.setitem(startup.CASES, "broken", ["-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exit 3"):
        startup.run_startup(repeats=1, cases=["broken"])


# --- the entry point --------------------------------------------------------------------------

REPORT_OUTPUT = """2 recordings, 3 steps, 14 modules each: 5.1 MiB, written in 8.2 s
full report: 53.6 s, 3.83 s per module, 474 ms per PNG (113 PNGs)
1 modules, best of 1: reused figures 5.95 s, fresh figures 5.17 s, fresh/reused = 0.87x
"""


def test_parser_reads_the_report_result_lines():
    from benchmarks.suite import parse_report

    assert parse_report(REPORT_OUTPUT) == {"report_s": 53.6, "pngs": 113.0, "fresh_over_reused": 0.87}
    with pytest.raises(RuntimeError, match="output format changed"):
        parse_report("full report took a while")


def test_a_failing_benchmark_becomes_a_failed_row():
    from benchmarks.suite import SCALES, Outcome, run_suite, summary_table

    suite = Registry("benchmark")
    suite.register("fine")(lambda scale, log: Outcome("fine", [{"benchmark": "fine", "measured": "x",
                                                                "result": "1.0", "target": ""}]))

    def broken(scale, log):
        raise RuntimeError("the script crashed\ntraceback ...")

    suite.register("broken")(broken)
    outcomes = run_suite(SCALES["smoke"], suite=suite)
    assert [o.name for o in outcomes] == ["fine", "broken"]
    assert outcomes[1].summary[0]["result"] == "failed"
    assert outcomes[1].summary[0]["target"] == "the script crashed"
    assert "| fine " in summary_table(outcomes)


def test_entry_point_writes_the_markdown_with_the_machine(tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "bench.md"
    assert main(["--scale", "smoke", "--only", "recording_size", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "Command: `OMP_NUM_THREADS=1 python -m benchmarks --scale smoke" in text
    assert f"nproc {os.cpu_count()}" in text and "torch " in text
    assert "recording size, tiny-gpt2" in text


@pytest.mark.slow
def test_analysis_benchmark_runs_at_the_smallest_scale():
    """Calls the analysis owner's benchmark function: its Result is what the summary reads."""
    from benchmarks.suite import SCALES, SUITE

    outcome = SUITE.get("analysis")(SCALES["smoke"], lambda line: None)
    assert float(outcome.summary[0]["result"]) > 0
    assert "4 modules × 12 snapshots" in outcome.summary[0]["benchmark"]


ANALYSIS_FILE_OUTPUT = """recording /tmp/x.h5: 48 modules x 2000 snapshots, 17.58 GiB, ready in 1 s
  default       27.0 s wall, CPU  39.1 user +   5.5 sys, peak +   605 MiB = 1.29x the largest module
default     stats + health: median 28.5 s, best 27.0 s, peak 1.29x the largest module
prefetch    stats + health (cold): median 46.9 s, best 46.9 s, peak 2.29x the largest module
"""


def test_parser_reads_the_analysis_file_summary():
    from benchmarks.suite import parse_analysis_file

    got = parse_analysis_file(ANALYSIS_FILE_OUTPUT)
    assert got["shape"] == {"modules": 48.0, "snapshots": 2000.0, "gib": 17.58}
    assert got["default"] == {"median_s": 28.5, "peak_x": 1.29}
    assert got["prefetch"] == {"median_s": 46.9, "peak_x": 2.29}
    with pytest.raises(RuntimeError, match="output format changed"):
        parse_analysis_file("recording written")


@pytest.mark.slow
def test_analysis_file_benchmark_runs_at_the_smallest_scale(tmp_path):
    """Writes a tiny recording through the Recorder's writer and times `analyze` on it in a
    child process: the rows the summary shows."""
    import dataclasses

    from benchmarks.suite import SCALES, SUITE

    scale = dataclasses.replace(SCALES["smoke"], analysis_file_args=(
        *SCALES["smoke"].analysis_file_args, "--path", str(tmp_path / "bench.h5")))
    outcome = SUITE.get("analysis_file")(scale, lambda line: None)
    assert "4 modules × 12 snapshots" in outcome.summary[0]["benchmark"]
    assert float(outcome.summary[0]["result"].rstrip(" s")) > 0
    assert float(outcome.summary[1]["result"]) > 0
    with lorascope.open(tmp_path / "bench.h5") as rec:  # a real recording, finished
        assert rec.status == "complete" and len(rec.steps) == 12 and len(rec.modules) == 4


@pytest.mark.slow
def test_the_sharded_overhead_benchmark_runs_fsdp2_on_two_ranks():
    from benchmarks.sharded_overhead import run_sharded, sharded_rows

    result = run_sharded("tiny-gpt2", nproc=2, steps=2, repeats=1, warmup=1)
    assert sorted(result.samples) == ["lorascope", "none"]
    assert "FSDP2 on 2 ranks" in result.description
    ours = result.samples["lorascope"]
    assert len(ours.step_seconds) == 1 and len(ours.last("hook_seconds")) == 1
    assert ours.last("bytes") > 0 and result.samples["none"].last("bytes") == 0  # rank 0 wrote; nothing without
    rows = sharded_rows(result)
    assert [r["contender"] for r in rows] == ["none", "lorascope"] and "hooks / raw copy" not in rows[0]
