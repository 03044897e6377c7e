"""Recording overhead of an FSDP2 run: N processes under torchrun (gloo on CPU, NCCL with
``--device cuda``) train a GPT-2-small-shaped model with lorascope's LoRA (r = 16 on every
attention and MLP projection of all 12 blocks), sharded as ``parallel = "fsdp"`` shards it
(``fully_shard`` per block, then the root), through lorascope's own loop; in turn without
recording and with the Recorder storing A and B every step (every rank joins the gather of each
snapshot, rank 0 writes), interleaved in the same processes (see ``common.interleave``).

    OMP_NUM_THREADS=1 python -m benchmarks.sharded_overhead                    # launches torchrun itself
    OMP_NUM_THREADS=1 python -m benchmarks.sharded_overhead --model tiny-gpt2 --steps 3 --repeats 1

Rank 0's step times are the run's: every step's all-gathers hold the ranks together."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import Samples, Segment, format_table, machine_info  # noqa: E402
from benchmarks.peers_overhead import LorascopeRecording, NoRecording, peers_rows, PeersResult  # noqa: E402

__all__ = ["run_sharded", "sharded_rows", "main"]


class ShardedLorascope(LorascopeRecording):
    """The suite's lorascope contender, on every rank: the ranks other than 0 write nothing."""

    label = "lorascope Recorder, every step, every rank joining the gathers"

    def end(self):
        self.rec.close("complete")
        written = self.path.stat().st_size if self.path.exists() else 0
        return {"bytes": written, "kept": f"full A and B, fp32 ({self.matrices} matrices, {self.values:,} values)"}


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from benchmarks.common import interleave, random_batches
    from benchmarks.peers_overhead import _segment
    from benchmarks.workloads import build_workload
    from lorascope.train.distributed import init_distributed, shard_batches, wrap_model

    torch.set_num_threads(args.threads)
    info, device = init_distributed(torch.device(args.device))
    work = build_workload(args.model, rank=16, seq_len=args.seq, device=str(device))
    work.model = wrap_model(work.model, info, device, "fsdp")
    optimizer = torch.optim.AdamW([p for p in work.model.parameters() if p.requires_grad], lr=1e-4)
    # the global batch: each rank trains on its own `batch` rows of it
    batches = shard_batches(random_batches(args.steps, work.seq_len, work.vocab_size,
                                           batch_size=args.batch * info.world_size), info)
    watchers = {"none": NoRecording(), "lorascope": ShardedLorascope()}
    log = print if info.is_main else (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="lorascope-sharded-") as tmp:
        samples = interleave({name: (lambda w=w: _segment(work, optimizer, w, batches, args.steps, args.warmup,
                                                           Path(tmp), str(device)))
                              for name, w in watchers.items()}, args.repeats, log=log)
    if info.is_main:
        result = {name: [{"steps": seg.step_seconds, "finish": seg.finish_seconds, "extra": seg.extra}
                         for seg in s.segments] for name, s in samples.items()}
        Path(args.json).write_text(json.dumps({"world_size": info.world_size, "description": work.description,
                                               "samples": result}))
    dist.barrier()
    dist.destroy_process_group()


def run_sharded(model: str = "gpt2-small", *, nproc: int = 2, steps: int = 4, repeats: int = 3, warmup: int = 1,
                batch: int = 1, seq: int = 128, device: str = "cpu", threads: int = 1) -> PeersResult:
    """Launches the worker under torchrun and returns its samples (rank 0's) as a PeersResult."""
    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup}) to measure anything")
    with tempfile.TemporaryDirectory(prefix="lorascope-sharded-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "benchmarks.sharded_overhead", "--worker", "--json", str(out), "--model", model,
                   "--steps", str(steps), "--repeats", str(repeats), "--warmup", str(warmup), "--batch", str(batch),
                   "--seq", str(seq), "--device", device, "--threads", str(threads)]
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"the sharded benchmark failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        data = json.loads(out.read_text())
    samples = {name: Samples(name, [Segment(seg["steps"], seg["finish"], seg["extra"]) for seg in segments])
               for name, segments in data["samples"].items()}
    description = f"{data['description']}, FSDP2 on {data['world_size']} ranks"
    return PeersResult(model, description, steps, repeats, samples, {})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-small")
    ap.add_argument("--nproc", type=int, default=2, help="processes (ranks) under torchrun")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per turn (the first `--warmup` not counted)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="sequences per rank per step")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by the launcher
    ap.add_argument("--json", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    print(f"{args.model}: FSDP2 on {args.nproc} ranks ({args.device}), {args.steps} steps per turn × {args.repeats} "
          f"repetitions, {args.batch} × {args.seq} tokens per rank per step", flush=True)
    result = run_sharded(args.model, nproc=args.nproc, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                         batch=args.batch, seq=args.seq, device=args.device, threads=args.threads)
    info = machine_info()
    print(f"machine: {', '.join(f'{k} {v}' for k, v in info.items())}")
    print(format_table(sharded_rows(result)))


def sharded_rows(result: PeersResult) -> list[dict]:
    """``peers_rows`` without the raw-copy column: a sharded snapshot is a gather, not one copy."""
    return [{k: v for k, v in row.items() if k != "hooks / raw copy"} for row in peers_rows(result)]


if __name__ == "__main__":
    main()
