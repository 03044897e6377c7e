"""Training-step overhead of recording every step, measured side by side.

A GPT-2-small-shaped model (12 blocks, width 768, random weights: nothing downloaded) with
lorascope LoRA rank 16 on c_attn, attn c_proj, c_fc and mlp c_proj of all 12 blocks (96 matrices,
9 MiB per fp32 snapshot). Plain and recorded training steps alternate in adjacent pairs, so that
machine noise hits both alike; the report gives the median per-pair ratio, the medians of the
per-step times, how long the training thread spent inside the Recorder's hooks, and that time
against the raw copy of one snapshot (``torch._foreach_copy_`` of every A and B into a
preallocated host buffer; issue 4's target is at most about twice that).

``--compare-rounds N`` then compares where the update norms are computed (``update_norms``
"device": on the training thread, the path before the writer computed them; "host": on the
writer thread from the captured copies) without training: each round, in rotating order, the
writers are drained (untimed, as a training step gives them time to), the weights change
like after an optimizer step and each contender (raw copy, host-path Recorder,
device-path Recorder) is timed, so that all three meet the same machine load.

    OMP_NUM_THREADS=1 python benchmarks/record_overhead.py                 # CPU, 30 pairs
    OMP_NUM_THREADS=1 python benchmarks/record_overhead.py --pairs 0 --compare-rounds 200
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


class RawCopy:
    """The floor: one ``_foreach_copy_`` of every A and B into a preallocated host buffer of the
    storage dtype (pinned and non-blocking on CUDA, as the Recorder's own copy)."""

    def __init__(self, params: list[torch.Tensor], device: str, dtype: str = "float32") -> None:
        cuda = device.startswith("cuda")
        total = sum(p.numel() for p in params)
        self.flat = torch.empty(total, dtype=getattr(torch, dtype), pin_memory=cuda)
        self.views, at = [], 0
        for p in params:
            self.views.append(self.flat[at:at + p.numel()].view(p.shape))
            at += p.numel()
        self.params = [p.detach() for p in params]

    def __call__(self) -> None:
        torch._foreach_copy_(self.views, self.params, non_blocking=True)


def compare_hooks(model: torch.nn.Module, params: list[torch.Tensor], device: str, folder: Path,
                  rounds: int, dtype: str, every: int = 1) -> dict:
    """Training-thread time per step of each update-norm path against the raw copy, interleaved."""
    from lorascope.config import RecordConfig
    from lorascope.record import Recorder

    g = torch.Generator(device=device).manual_seed(1)
    deltas = [torch.randn(p.shape, generator=g, device=device) * 1e-4 for p in params]
    copy = RawCopy(params, device, dtype)
    recs = {}
    for place in ("host", "device"):
        recs[place] = Recorder(folder / f"compare-{place}.h5", model,
                               RecordConfig(every=every, dtype=dtype, flush_every_steps=10),
                               update_norms=place)
        recs[place].start()
    steps = {place: 0 for place in recs}
    times = {"copy": [], "host": [], "device": []}
    depth = {place: 0 for place in recs}

    def contender(name: str) -> None:
        if name == "copy":
            copy()
            return
        steps[name] += 1
        recs[name].on_optimizer_step(steps[name], {"loss": 0.0})

    names = list(times)
    with torch.no_grad():
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                # in a run the writer stores a snapshot while the next step computes (~0.5 s
                # here): drained first, untimed, as it would be by then
                for rec in recs.values():
                    rec.flush(wait=True)
                torch._foreach_add_(params, deltas)  # an optimizer step's write of the weights
                sync(device)
                t0 = time.perf_counter()
                contender(name)
                sync(device)
                times[name].append(time.perf_counter() - t0)
                if name in depth:
                    depth[name] = max(depth[name], recs[name].queue_depth())
    for rec in recs.values():
        rec.close()
    copy_ms = statistics.median(times["copy"]) * 1e3
    out = {"rounds": rounds, "every": every, "median_raw_copy_ms": round(copy_ms, 3)}
    for place in recs:
        ms = statistics.median(times[place]) * 1e3
        out[f"median_hook_ms_{place}"] = round(ms, 3)
        out[f"hook_over_copy_{place}"] = round(ms / copy_ms, 2)
        out[f"max_queue_depth_{place}"] = depth[place]
    return out


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
    ap.add_argument("--update-norms", default="auto", choices=("auto", "host", "device"),
                    help="where the recorder of the pairs computes the update norms")
    ap.add_argument("--compare-rounds", type=int, default=0,
                    help="rounds of the interleaved host/device/raw-copy comparison (0: skip)")
    ap.add_argument("--compare-every", type=int, default=1,
                    help="snapshot schedule of the comparison (steps between it snapshots the norms "
                         "come from a separate float32 copy)")
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
    ratios, hook_times, copy_times, depth = [], [], [], 0
    raw_copy = RawCopy(params, args.device, args.dtype)

    def time_copy() -> None:  # outside the step's timing
        sync(args.device)
        c0 = time.perf_counter()
        raw_copy()
        sync(args.device)
        copy_times.append(time.perf_counter() - c0)

    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp) / "bench.h5", model, RecordConfig(every=1, dtype=args.dtype,
                                                                  flush_every_steps=10),
                       update_norms=args.update_norms)
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
                # the raw copy is timed before or after the hook, alternately, so that neither
                # always finds the weights freshly read into the cache by the other
                copy_first = recorded_steps % 2 == 0
                if copy_first:
                    took = time.perf_counter() - t0
                    time_copy()
                    t0 = time.perf_counter() - took
                h0 = time.perf_counter()
                rec.on_optimizer_step(recorded_steps, {"loss": 0.0}, opt)
                hook_times.append(time.perf_counter() - h0)
                depth = max(depth, rec.queue_depth())
                if not copy_first:
                    sync(args.device)
                    took = time.perf_counter() - t0
                    time_copy()
                    return took
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
        compared = (compare_hooks(model, params, args.device, Path(tmp), args.compare_rounds,
                                  args.dtype, args.compare_every)
                    if args.compare_rounds > 0 else None)
        snapshot_bytes = sum(p.numel() for p in params) * {"float32": 4, "float16": 2, "bfloat16": 2}[args.dtype]

    result: dict = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "lora_matrices": len(params), "snapshot_MiB": round(snapshot_bytes / 2**20, 2),
    }
    if ratios:
        result.update(pairs_result(args, times, ratios, hook_times, copy_times, depth))
    if compared is not None:
        result["compare"] = compared
    print(json.dumps(result, indent=2))


def pairs_result(args, times, ratios, hook_times, copy_times, depth) -> dict:
    plain = statistics.median(times["plain"])
    recorded = statistics.median(times["recorded"])
    hook = statistics.median(hook_times)
    copy = statistics.median(copy_times)
    return {
        "update_norms": args.update_norms, "batch": args.batch, "seq": args.seq, "pairs": len(ratios),
        "median_step_plain_ms": round(plain * 1e3, 2),
        "median_step_recorded_ms": round(recorded * 1e3, 2),
        "ratio_of_medians": round(recorded / plain, 4),
        "median_pair_ratio": round(statistics.median(ratios), 4),
        "median_hook_ms": round(hook * 1e3, 3),
        "max_hook_ms": round(max(hook_times) * 1e3, 3),
        "median_raw_copy_ms": round(copy * 1e3, 3),
        "hook_over_copy": round(hook / copy, 2),
        "hook_share_of_step": round(hook / plain, 5),
        "max_queue_depth": depth,
    }


if __name__ == "__main__":
    main()
