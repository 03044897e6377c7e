"""A plain training loop recorded the README's way (``with Recorder(...) as rec: rec.start(...);
... rec.on_micro_step(...); ... rec.on_optimizer_step(...)``), on a tiny PEFT Llama, either in
one process or sharded under ``torchrun``:

    python tests/sharded_worker.py OUT.h5                                  # the reference
    torchrun --nproc-per-node 2 tests/sharded_worker.py --shard fsdp2 OUT.h5
    torchrun --nproc-per-node 2 tests/sharded_worker.py --shard fsdp2 fsdp1 zero3 OUT.h5   # OUT-fsdp2.h5, ...

(zero3 needs deepspeed.) Every run sees the same global batch per step (each rank its own rows
of it), so the sharded recordings must equal the one-process one up to float reduction order.
Several ``--shard`` kinds run one after the other in the same processes, each from a fresh
model, into OUT-<kind>.h5. ``--die-at K`` makes rank 1 exit abruptly before step K's forward."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorascope.config import RecordConfig  # noqa: E402
from lorascope.record import Recorder  # noqa: E402

GLOBAL_BATCH, SEQ, VOCAB, LR = 4, 16, 128, 1e-2


def build_model(lora: str) -> torch.nn.Module:
    """A 2-block Llama with LoRA: PEFT's (rank 3, so that a 2-rank shard of A is uneven) or
    lorascope's own layer."""
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
    return model


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of step ``step``'s global batch."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
    per_rank = GLOBAL_BATCH // world
    return ids[rank * per_rank:(rank + 1) * per_rank]


def shard_fsdp2(model: torch.nn.Module, world: int):
    from torch.distributed.fsdp import fully_shard

    from lorascope.train.distributed import decoder_blocks

    blocks = decoder_blocks(model)
    assert len(blocks) == 2, blocks  # the worker's own check: every block sharded
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model, model


def shard_fsdp1(model: torch.nn.Module, world: int):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    wrapped = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True,
                   device_id=torch.device("cpu"))
    return wrapped, wrapped


SHARDERS: dict[str, Callable] = {"fsdp2": shard_fsdp2, "fsdp1": shard_fsdp1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shard", nargs="+", choices=["none", "fsdp2", "fsdp1", "zero3"], default=["none"])
    ap.add_argument("--lora", choices=["peft", "lorascope"], default="peft")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also gradients, optimizer state and W0")
    ap.add_argument("--die-at", type=int, default=0, help="rank 1 exits abruptly before this step")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    for kind in args.shard:
        out = args.out if len(args.shard) == 1 else str(Path(args.out).with_suffix("")) + f"-{kind}.h5"
        train(kind, out, args, rank, world)
    if world > 1:
        dist.destroy_process_group()
    return 0


def train(kind: str, out: str, args: argparse.Namespace, rank: int, world: int) -> None:
    model = build_model(args.lora)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    if kind == "zero3":
        import deepspeed

        optimizer = torch.optim.AdamW(params(model), lr=LR)
        config = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // world, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        forward, recorded = engine, engine.module
        backward, step_ = engine.backward, lambda: engine.step()
    else:
        if kind != "none":
            model, _ = SHARDERS[kind](model, world)
        optimizer = torch.optim.AdamW(params(model), lr=LR)
        forward, recorded = model, model
        backward = lambda loss: loss.backward()  # noqa: E731

        def step_() -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    record = RecordConfig(every=args.every, grads=args.full, optimizer_state=args.full, base_weights=args.full,
                          flush_every_steps=1)
    with Recorder(out, recorded, record, total_steps=args.steps) as rec:
        rec.start(optimizer=optimizer)
        for step in range(1, args.steps + 1):
            if step == args.die_at and rank == 1:
                os._exit(3)  # no cleanup at all, as a crashed or killed rank
            ids = batch(step, rank, world)
            loss = forward(input_ids=ids, labels=ids).loss
            backward(loss)
            rec.on_micro_step(step)
            step_()
            rec.on_optimizer_step(step, {"loss": loss.item()}, optimizer)


if __name__ == "__main__":
    sys.exit(main())
