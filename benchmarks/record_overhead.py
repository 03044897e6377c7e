"""Training-step overhead of recording every step, measured side by side.

A GPT-2-small-shaped model (12 blocks, width 768, random weights: nothing downloaded) with
lorascope LoRA rank 16 on c_attn, attn c_proj, c_fc and mlp c_proj of all 12 blocks (96 matrices,
9 MiB per fp32 snapshot). Plain and recorded training steps alternate in adjacent pairs, so that
machine noise hits both alike; the report gives the median per-pair ratio, the medians of the
per-step times, and how long the training thread spent inside the Recorder's hooks.

    python benchmarks/record_overhead.py                 # CPU, 30 pairs
    python benchmarks/record_overhead.py --device cuda --batch 8 --seq 256
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(device: str, layers: int, rank: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lorascope.config import LoraConfig
    from lorascope.lora import add_lora

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=768, n_head=12))
    add_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, targets=["attn", "mlp"], layers=":", init="gaussian"))
    return model.to(device).train()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=30, help="pairs of (plain, recorded) steps")
    ap.add_argument("--dtype", default="float32", help="storage dtype of the recording")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the writer takes another core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lorascope.config import RecordConfig
    from lorascope.record import Recorder

    model = build(args.device, args.layers, args.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, 50257, (args.batch, args.seq), device=args.device)

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, optimizer state
        step()
    sync(args.device)

    # Adjacent pairs of steps, one plain and one recorded, in alternating order: the load of a
    # shared machine drifts over seconds, so only side-by-side steps compare fairly. Before a
    # plain step the writer is drained (untimed), so it is clean; a recorded step runs while the
    # writer stores the previous snapshot, as in a run that records every step.
    times = {"plain": [], "recorded": []}
    ratios, hook_times, depth = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp) / "bench.h5", model, RecordConfig(every=1, dtype=args.dtype,
                                                                  flush_every_steps=10))
        rec.start(opt)
        recorded_steps = 0

        def timed(recorded: bool) -> float:
            nonlocal recorded_steps, depth
            if not recorded:
                rec.flush(wait=True)
            sync(args.device)
            t0 = time.perf_counter()
            step()
            if recorded:
                recorded_steps += 1
                h0 = time.perf_counter()
                rec.on_optimizer_step(recorded_steps, {"loss": 0.0}, opt)
                hook_times.append(time.perf_counter() - h0)
                depth = max(depth, rec.queue_depth())
            sync(args.device)
            return time.perf_counter() - t0

        timed(True)  # the first snapshot allocates nothing new, but touches fresh ring slots
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            got = {r: timed(r) for r in order}
            times["plain"].append(got[False])
            times["recorded"].append(got[True])
            ratios.append(got[True] / got[False])
        rec.close()
        snapshot_bytes = sum(p.numel() for p in params) * {"float32": 4, "float16": 2, "bfloat16": 2}[args.dtype]

    plain = statistics.median(times["plain"])
    recorded = statistics.median(times["recorded"])
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "lora_matrices": len(params), "snapshot_MiB": round(snapshot_bytes / 2**20, 2),
        "batch": args.batch, "seq": args.seq, "pairs": len(ratios),
        "median_step_plain_ms": round(plain * 1e3, 2),
        "median_step_recorded_ms": round(recorded * 1e3, 2),
        "ratio_of_medians": round(recorded / plain, 4),
        "median_pair_ratio": round(statistics.median(ratios), 4),
        "median_hook_ms": round(statistics.median(hook_times) * 1e3, 3),
        "max_hook_ms": round(max(hook_times) * 1e3, 3),
        "hook_share_of_step": round(statistics.median(hook_times) / plain, 5),
        "max_queue_depth": depth,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
