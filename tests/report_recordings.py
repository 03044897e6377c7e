"""Real recordings for the report and info tests: a tiny GPT-2 (built from a config, never
downloaded) with lorascope's LoRA, trained a few steps on random tokens by a plain loop, recorded
by the real Recorder."""
from __future__ import annotations

from pathlib import Path

import torch

from lorascope.config import LoraConfig, RecordConfig, RunConfig, config_to_dict
from lorascope.lora import add_lora
from lorascope.record import Recorder

_OPTIMIZERS = {
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


def tiny_gpt2_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def record_tiny_run(
    path: Path,
    name: str,
    *,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    steps: int = 6,
    seed: int = 0,
    targets: tuple[str, ...] = ("attn", "mlp"),
    rank: int = 4,
    base_weights: bool = True,
    close: bool = True,
    flush_every_steps: int = 10,
    grad_accum: int = 1,
    grads: bool = False,
):
    """Trains and records a tiny run (`grad_accum` micro-batches per step, each one's gradient
    recorded with `grads`); returns the path (or the open Recorder when close=False, to test
    readers of a file that is still being written)."""
    model = tiny_gpt2_model(seed)
    lora = LoraConfig(rank=rank, alpha=2.0 * rank, targets=list(targets))
    add_lora(model, lora)
    run_config = RunConfig(name="tiny", seed=seed, lora=lora)
    run_config.optim.optimizer = optimizer
    run_config.optim.lr = lr
    run_config.optim.steps = steps
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _OPTIMIZERS[optimizer](params, lr)
    rec = Recorder(path, model, RecordConfig(base_weights=base_weights, flush_every_steps=flush_every_steps, grads=grads),
                   run_name=name,
                   run_config=config_to_dict(run_config), total_steps=steps)
    rec.start(optimizer=opt)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        for micro in range(grad_accum):
            tokens = torch.randint(0, 64, (4, 16), generator=generator)
            loss = model(input_ids=tokens, labels=tokens).loss
            (loss / grad_accum).backward()
            rec.on_micro_step((step - 1) * grad_accum + micro + 1)
        opt.step()
        opt.zero_grad()
        rec.on_optimizer_step(step, {"loss": float(loss.detach()), "lr": lr})
        if step % 3 == 0:
            rec.log_eval(step, {"loss": float(loss.detach()) + 0.1})
    if not close:
        return rec
    rec.close("complete")
    return path
