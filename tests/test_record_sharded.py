"""Sharded training recorded for real: 2 CPU processes under torchrun (gloo) train a tiny PEFT
Llama in a plain loop with the README's Recorder calls (tests/sharded_worker.py), sharded by
FSDP2 (``fully_shard``), FSDP1 (``FullyShardedDataParallel``) and DeepSpeed ZeRO-3, and each
recording must equal a one-process recording of the same global batches: weights, per-micro-step
gradients, AdamW's moments, W0 and the per-step update norms, to 1e-5. No framework is mocked."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.record import NullRecorder, Recorder
from lorascope.record.gather import GATHERS, Gather, gather_kind, is_sharded
from lorascope.record.sharded_norms import ShardedUpdateNorms
from tests import sharded_worker

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharded_worker.py"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
TOLERANCE = 1e-5


def torchrun(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # --standalone: a free port of its own, so that parallel runs of the suite never collide
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(WORKER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=420)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The one-process recording of the plain loop, with gradients, optimizer state and W0."""
    path = tmp_path_factory.mktemp("sharded") / "reference.h5"
    assert sharded_worker.main([str(path), "--full"]) == 0
    return path


@pytest.mark.slow
def test_fsdp2_fsdp1_and_zero3_record_what_one_process_records(tmp_path, reference):
    kinds = ["fsdp2", "fsdp1"] + (["zero3"] if HAS_DEEPSPEED else [])
    torchrun([str(tmp_path / "run.h5"), "--full", "--kind", *kinds], tmp_path)
    for kind in kinds:
        path = tmp_path / f"run-{kind}.h5"
        with lorascope.open(path) as rec:
            assert rec.status == "complete" and rec.environment["world_size"] == 2
            assert list(rec.steps) == [0, 1, 2, 3] and list(rec.grad_steps) == list(rec.state_steps) == [1, 2, 3]
            module = next(iter(rec.modules.values()))
            assert sorted(module.state_A) == sorted(module.state_B) == ["exp_avg", "exp_avg_sq"]
        gaps = sharded_worker.differences(reference, path)  # also checks modules and step axes
        assert sorted(gaps) == ["A", "B", "W0", "grad_A", "grad_B", "state_A", "state_B", "updates"]
        assert gaps["W0"] == 0.0, kind  # gathered once, not computed: bit for bit
        assert max(gaps.values()) <= TOLERANCE, (kind, gaps)


@pytest.mark.slow
def test_a_rank_that_dies_leaves_rank_0s_file_readable(tmp_path):
    path = tmp_path / "died.h5"
    done = torchrun([str(path), "--kind", "fsdp2", "--steps", "5", "--die-at", "3"], tmp_path, check=False)
    assert done.returncode != 0
    with lorascope.open(path) as rec:
        # rank 1 vanished before step 3: rank 0's gather or forward failed, and what it had
        # committed (flush_every_steps=1) stays: steps 0-2 and their update norms
        assert rec.status in ("failed", "interrupted")
        assert list(rec.steps) == [0, 1, 2]
        module = next(iter(rec.modules.values()))
        assert module.A[:].shape[0] == 3 and np.isfinite(module.A[:]).all()
        assert list(module.updates["step"]) == [1, 2]


def test_zero3_is_part_of_the_sharded_test():
    """The test above runs ZeRO-3 only where DeepSpeed is installed (the dev extra has it)."""
    if not HAS_DEEPSPEED:
        pytest.skip("ZeRO-3 was not recorded: deepspeed is not installed (pip install -e '.[dev]' or lorascope[zero3])")


def test_unsharded_models_use_the_plain_gather(tiny_gpt2):
    from lorascope.config import LoraConfig
    from lorascope.lora import add_lora

    add_lora(tiny_gpt2, LoraConfig(rank=2, layers=":"))
    assert gather_kind(tiny_gpt2) == "plain" and not is_sharded(tiny_gpt2)
    assert not is_sharded(None)  # a Recorder called without a model fails later, with its own message
    assert GATHERS.names() == ["plain", "zero3", "fsdp1", "fsdp2"]


def test_other_ranks_of_an_unsharded_run_get_a_null_recorder(tiny_gpt2, tmp_path, monkeypatch):
    from lorascope.config import LoraConfig
    from lorascope.lora import add_lora

    add_lora(tiny_gpt2, LoraConfig(rank=2, layers=":"))
    monkeypatch.setenv("RANK", "1")
    assert isinstance(Recorder(tmp_path / "r.h5", tiny_gpt2, RecordConfig()), NullRecorder)


def test_sharded_update_norms_split_over_parts_equal_the_norms_of_the_whole():
    """Two 'ranks' holding alternate rows of every matrix: the norms from the summed squares of
    their parts equal float64 norms of the whole matrices, step by step."""

    class Halves(Gather):
        def __init__(self, part: int) -> None:
            self.part = part

        def local(self, tensors):
            return [t.detach()[self.part::2] for t in tensors]

        def reduce(self, tensor):
            return tensor

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 7, generator=g), torch.randn(9, 5, generator=g)]  # A, B of one pair
    history = [[p.clone() for p in params]]
    parts = [ShardedUpdateNorms(Halves(r), params) for r in (0, 1)]
    for step in (1, 2, 3):
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 10.0 ** -step)
        history.append([p.clone() for p in params])
        for norms in parts:
            norms.update(step, params)
    rows = [norms.reduce() for norms in parts]
    assert [s for s, _ in rows[0]] == [1, 2, 3]
    for (step, r0), (_, r1) in zip(*rows):
        got = np.sqrt(r0.astype(np.float64) ** 2 + r1.astype(np.float64) ** 2)  # the two ranks' sums
        before, after = history[step - 1], history[step]
        want = [np.linalg.norm((after[0] - before[0]).double().numpy()), np.linalg.norm((after[1] - before[1]).double().numpy()),
                np.linalg.norm(after[0].double().numpy()), np.linalg.norm(after[1].double().numpy())]
        np.testing.assert_allclose(got[0], want, rtol=1e-6)
    assert parts[0].reduce() == []  # nothing since the last reduce


def test_parallel_modes_are_a_registry_that_names_the_choices(tiny_llama):
    from lorascope.errors import UsageError
    from lorascope.train.distributed import PARALLEL, DistInfo, decoder_blocks, wrap_model

    assert PARALLEL.names() == ["ddp", "fsdp"]
    with pytest.raises(UsageError, match="ddp, fsdp"):
        wrap_model(tiny_llama, DistInfo(), torch.device("cpu"), "zero")
    assert wrap_model(tiny_llama, DistInfo(), torch.device("cpu"), "fsdp") is tiny_llama  # one process: as is
    assert [type(b).__name__ for b in decoder_blocks(tiny_llama)] == ["LlamaDecoderLayer"] * 2
