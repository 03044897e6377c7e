"""Sharded training recorded the ways users record it, on a tiny PEFT Llama, in one process or
under ``torchrun``. Kinds (``--kind``, several run one after the other in the same processes,
each from a fresh model, into OUT-<kind>.h5):

* ``plain``: a plain loop, unsharded, with the README's Recorder calls (``rec.start``;
  ``rec.on_micro_step`` after backward; ``rec.on_optimizer_step`` after the step): the reference;
* ``fsdp2``, ``fsdp1``, ``zero3``: the same loop sharded by ``fully_shard`` per block + root, by
  ``FullyShardedDataParallel(use_orig_params=True)`` per block, by DeepSpeed ZeRO-3;
* ``hf``, ``hf_fsdp2``: the Hugging Face Trainer with ``LorascopeCallback``, unsharded and under
  accelerate's FSDP2 plugin (accelerate applies FSDP on accelerators only, so this one needs a GPU).

    python tests/sharded_worker.py OUT.h5 --full                                    # the reference
    torchrun --nproc-per-node 2 tests/sharded_worker.py OUT.h5 --full --kind fsdp2 fsdp1 zero3

Every run sees the same global batch per step (each rank its own rows of it), so the sharded
recordings must equal the one-process one up to float reduction order (``differences``).
``--die-at K`` makes rank 1 exit abruptly before step K's forward pass."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lorascope  # noqa: E402
from lorascope.config import RecordConfig  # noqa: E402
from lorascope.record import Recorder  # noqa: E402

GLOBAL_BATCH, SEQ, VOCAB, LR = 4, 16, 128, 1e-2
KINDS = ("plain", "fsdp2", "fsdp1", "zero3", "hf", "hf_fsdp2")


def build_model(lora: str, device: torch.device) -> torch.nn.Module:
    """A 2-block Llama with LoRA: PEFT's (rank 3, so that a 2-rank shard of A is uneven) or
    lorascope's own layer (with the SVD init, whose base holds an offset: W0 is computed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    if lora == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj",
                                                                                               "down_proj"]))
    else:
        from lorascope.config import LoraConfig
        from lorascope.lora import add_lora

        add_lora(model, LoraConfig(rank=3, alpha=6.0, targets=["q", "v"], layers=":", init="svd"))
    with torch.no_grad():  # B = 0 gives A no gradient at step 1; start both moving
        for name, p in model.named_parameters():
            if p.requires_grad and (name.endswith("lora_B.default.weight") or name.endswith(".B")):
                p.normal_(0, 0.02)
    return model.to(device)


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of step ``step``'s global batch."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
    per_rank = GLOBAL_BATCH // world
    return ids[rank * per_rank:(rank + 1) * per_rank]


def shard_fsdp2(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lorascope.train.distributed import decoder_blocks

    mesh = init_device_mesh(device.type, (world,))
    blocks = decoder_blocks(model)
    if len(blocks) != 2:
        raise RuntimeError(f"expected the 2 decoder blocks, found {len(blocks)}")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def shard_fsdp1(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True, device_id=device)


SHARDERS: dict[str, Callable[[torch.nn.Module, torch.device, int], torch.nn.Module]] = {
    "plain": lambda model, device, world: model, "fsdp2": shard_fsdp2, "fsdp1": shard_fsdp1,
}


def record_config(args: argparse.Namespace) -> RecordConfig:
    return RecordConfig(every=args.every, grads=args.full, optimizer_state=args.full, base_weights=args.full,
                        flush_every_steps=1)


def train_loop(kind: str, out: str, args: argparse.Namespace, device: torch.device, rank: int, world: int) -> None:
    model = build_model(args.lora, device)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    if kind == "zero3":
        import deepspeed

        # DeepSpeed's CPU accelerator would JIT-compile its shared-memory all-reduce (minutes of
        # C++ on a cold machine, once per DeepSpeed version): the gathers under test are the same
        # collectives over gloo, so the test does without it. DeepSpeed keeps this dict for edits.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        optimizer = torch.optim.AdamW(params(model), lr=LR)
        config = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // world, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        forward, recorded = engine, engine.module
        backward, update = engine.backward, lambda: engine.step()
    else:
        model = SHARDERS[kind](model, device, world)
        optimizer = torch.optim.AdamW(params(model), lr=LR)
        forward, recorded = model, model
        backward = lambda loss: loss.backward()  # noqa: E731

        def update() -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    with Recorder(out, recorded, record_config(args), total_steps=args.steps) as rec:
        rec.start(optimizer=optimizer)
        for step in range(1, args.steps + 1):
            if step == args.die_at:
                # rank 1 dies once rank 0 has the steps before on disk: otherwise, on a loaded
                # machine, the launcher may stop rank 0 before its writer committed them, and
                # what is kept would depend on timing, not on the Recorder
                rec.flush(wait=True)
                dist.barrier()
                if rank == 1:
                    os._exit(3)  # no cleanup at all, as a crashed or killed rank
            ids = batch(step, rank, world).to(device)
            loss = forward(input_ids=ids, labels=ids).loss
            backward(loss)
            rec.on_micro_step(step)
            update()
            rec.on_optimizer_step(step, {"loss": loss.item()}, optimizer)


class _Sequences(torch.utils.data.Dataset):
    """The global batches of ``batch`` as a dataset, for the Trainer."""

    def __init__(self, steps: int) -> None:
        self.ids = torch.cat([batch(step, 0, 1) for step in range(1, steps + 1)])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train_hf(kind: str, out: str, args: argparse.Namespace, device: torch.device, rank: int, world: int) -> None:
    from transformers import Trainer, TrainingArguments

    from lorascope.record.hf import LorascopeCallback

    model = build_model(args.lora, device)
    fsdp = ({"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                           "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
            if kind == "hf_fsdp2" else {})
    with tempfile.TemporaryDirectory(prefix="lorascope-hf-") as tmp:
        options = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=GLOBAL_BATCH // world, max_steps=args.steps, learning_rate=LR,
            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch", report_to=[],
            save_strategy="no", logging_steps=1, seed=0, use_cpu=device.type == "cpu", **fsdp)
        trainer = Trainer(model=model, args=options, train_dataset=_Sequences(args.steps),
                          callbacks=[LorascopeCallback(out, record_config(args))])
        trainer.train()
    if kind == "hf_fsdp2" and not any(type(p).__name__ == "DTensor" for p in trainer.model.parameters()):
        raise SystemExit("accelerate did not shard the model: its FSDP plugin applies only on accelerators "
                         "(on CPU it trains plain data parallel)")


def differences(reference: str | Path, other: str | Path) -> dict[str, float]:
    """The largest absolute difference of every recorded series between two recordings of the
    same run (weights, gradients, optimizer moments, W0, update norms), after checking that they
    hold the same modules and steps."""
    worst: dict[str, float] = {}
    with lorascope.open(reference) as one, lorascope.open(other) as two:
        for axis in ("steps", "grad_steps", "state_steps"):
            if list(getattr(one, axis)) != list(getattr(two, axis)):
                raise AssertionError(f"{axis}: {list(getattr(one, axis))} != {list(getattr(two, axis))} in {other}")
        if list(one.modules) != list(two.modules):
            raise AssertionError(f"modules differ: {list(one.modules)} != {list(two.modules)}")
        for name, m in one.modules.items():
            s = two.modules[name]
            series = {k: (getattr(m, k), getattr(s, k)) for k in ("A", "B", "grad_A", "grad_B", "W0")}
            series.update({f"state_{x}.{key}": (getattr(m, f"state_{x}")[key], getattr(s, f"state_{x}").get(key))
                           for x in "AB" for key in getattr(m, f"state_{x}")})
            series["updates"] = (m.updates.to_numpy(), s.updates.to_numpy())
            for key, (a, b) in series.items():
                if a is None and b is None:
                    continue
                if a is None or b is None:
                    raise AssertionError(f"{name} {key}: recorded in only one of {reference}, {other}")
                a, b = np.asarray(a[:]), np.asarray(b[:])
                if a.shape != b.shape:
                    raise AssertionError(f"{name} {key}: shape {a.shape} != {b.shape}")
                label = key.split(".")[0]  # the moments of A together, of B together
                gap = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
                worst[label] = max(worst.get(label, 0.0), gap)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kind", nargs="+", choices=KINDS, default=["plain"])
    ap.add_argument("--lora", choices=["peft", "lorascope"], default="peft")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also gradients, optimizer state and W0")
    ap.add_argument("--die-at", type=int, default=0, help="rank 1 exits abruptly before this step")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    launched = "LOCAL_RANK" in os.environ  # under torchrun, even with one process: FSDP needs a group
    device = torch.device(args.device)
    if launched:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
    for kind in args.kind:
        out = args.out if len(args.kind) == 1 else str(Path(args.out).with_suffix("")) + f"-{kind}.h5"
        (train_hf if kind.startswith("hf") else train_loop)(kind, out, args, device, rank, world)
    if launched:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
