"""Time to build a 6-run comparison report, and what reusing figures saves.

    OMP_NUM_THREADS=1 python benchmarks/report_time.py                 # 6 runs, 100 snapshots
    OMP_NUM_THREADS=1 python benchmarks/report_time.py --steps 1000    # a longer recording
    OMP_NUM_THREADS=1 python benchmarks/report_time.py --against /tmp/old-checkout   # before/after

Six recordings are written by the real Recorder from a 2-block Llama with SmolLM2-135M's shapes
(hidden 576, MLP 1536, rank 8 on the 7 attention and MLP projections of each block: 14 modules).
The weights move by synthetic optimizer-like updates instead of training, so the recordings cost
seconds; the report does not care how they moved. Printed:

1. the full report (every figure kind, every module, --workers processes drawing modules,
   default 1): seconds, seconds per module, per PNG;
2. the same report on --compare-modules modules drawn twice, interleaved, in this process, with
   reused figures (the Canvas) and with a fresh matplotlib figure per PNG: seconds of each and
   their ratio. The machine is shared and noisy, so only the ratio of runs measured side by side
   means much.

3. with --against a checkout of another lorascope tree (an older commit, e.g. from `git
   archive`), the full report of both trees on the same recordings, each in a fresh process,
   interleaved (this, that, that, this, ...) --repeats times: seconds and CPU seconds of each
   and their ratios.

`benchmarks/suite.py` parses the lines starting "full report:" and the "fresh/reused =" ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from lorascope.config import LoraConfig, RecordConfig  # noqa: E402
from lorascope.lora import add_lora, lora_layers  # noqa: E402
from lorascope.record import Recorder  # noqa: E402
from lorascope.report import build as build_module  # noqa: E402
from lorascope.report.build import build_report  # noqa: E402
from lorascope.report.canvas import Canvas  # noqa: E402

OPTIMIZERS = ("adamw", "came", "adafactor")
INITS = ("kaiming_uniform", "gaussian")


def _model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=576, intermediate_size=1536,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=64,
                         max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config)


def write_recording(path: Path, name: str, steps: int, seed: int, init: str) -> None:
    """A run whose A and B take small random steps that shrink over time, like a decaying lr."""
    model = _model(seed)
    add_lora(model, LoraConfig(rank=8, alpha=16, targets=["attn", "mlp"], init=init))
    layers = list(lora_layers(model).values())
    generator = torch.Generator().manual_seed(seed)
    with Recorder(path, model, RecordConfig(flush_every_steps=50), run_name=name,
                  run_config={"optim": {"optimizer": name.split("-")[0]}, "lora": {"init": init}},
                  total_steps=steps) as rec:
        rec.start()
        for step in range(1, steps + 1):
            lr = 1e-3 * (1 - step / (steps + 1))
            with torch.no_grad():
                for layer in layers:
                    layer.A.add_(lr * torch.randn(layer.A.shape, generator=generator))
                    layer.B.add_(lr * torch.randn(layer.B.shape, generator=generator))
            rec.on_optimizer_step(step, {"loss": 3.0 / (1 + 0.05 * step) + 0.01 * seed, "lr": lr})


class FreshCanvas(Canvas):
    """The slow way, for comparison: a new matplotlib figure for every PNG."""

    def grid(self, *args, **kwargs):
        self._layouts.clear()
        return super().grid(*args, **kwargs)


def _timed(recordings, out: Path, canvas_class, **kwargs) -> float:
    build_module.Canvas = canvas_class
    try:
        start = time.perf_counter()
        build_report(recordings, out, **kwargs)
        return time.perf_counter() - start
    finally:
        build_module.Canvas = Canvas


# The full report in a fresh process of whatever lorascope its PYTHONPATH holds: wall and CPU seconds.
_TIMED_REPORT = """
import json, os, sys, time
from lorascope.report import build_report
c0, t0 = os.times(), time.perf_counter()
build_report(sys.argv[2:], sys.argv[1])
c1 = os.times()
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": c1.user - c0.user + c1.system - c0.system}))
"""


def _report_in(tree: Path, paths: list[Path], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _TIMED_REPORT, str(out), *map(str, paths)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"the report of {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_trees(paths: list[Path], folder: Path, other: Path, repeats: int) -> None:
    """The full report of this tree and of `other` on the same recordings, interleaved."""
    here = Path(__file__).resolve().parents[1]
    trees = {"this": here, "that": Path(other).resolve()}
    times: dict[str, list[dict]] = {name: [] for name in trees}
    for k in range(repeats):
        for name in (("this", "that") if k % 2 == 0 else ("that", "this")):
            times[name].append(_report_in(trees[name], paths, folder / f"{name}{k}"))
            print(f"  {name} ({trees[name]}): {times[name][-1]['wall']:.1f} s, CPU {times[name][-1]['cpu']:.1f} s",
                  flush=True)
    med = {name: {key: statistics.median(t[key] for t in ts) for key in ("wall", "cpu")} for name, ts in times.items()}
    print(f"against {trees['that']}, median of {repeats}: this tree {med['this']['wall']:.1f} s "
          f"(CPU {med['this']['cpu']:.1f} s), that tree {med['that']['wall']:.1f} s (CPU {med['that']['cpu']:.1f} s); "
          f"that/this = {med['that']['wall'] / med['this']['wall']:.2f}x wall, "
          f"{med['that']['cpu'] / med['this']['cpu']:.2f}x CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--compare-modules", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes drawing modules in the full report")
    parser.add_argument("--against", type=Path, default=None,
                        help="another lorascope tree: time both trees' full report on the same recordings instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        paths = []
        for i in range(args.runs):
            name = f"{OPTIMIZERS[i % 3]}-{INITS[(i // 3) % 2]}"
            paths.append(folder / f"{name}.h5")
            write_recording(paths[-1], name, args.steps, seed=i, init=INITS[(i // 3) % 2])
        size = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{args.runs} recordings, {args.steps} steps, 14 modules each: {size:.1f} MiB, "
              f"written in {time.perf_counter() - start:.1f} s")
        if args.against is not None:
            compare_trees(paths, folder, args.against, args.repeats)
            return

        workers = args.workers
        seconds = _timed(paths, folder / "full", Canvas, workers=workers)
        pngs = len(list((folder / "full").glob("*.png")))
        print(f"full report: {seconds:.1f} s, {seconds / 14:.2f} s per module, "
              f"{seconds / pngs * 1000:.0f} ms per PNG ({pngs} PNGs) with {workers} worker process(es)")

        reused, fresh = [], []
        for k in range(args.repeats):  # interleaved, so both see the same machine load
            kw = dict(max_modules=args.compare_modules, workers=1)  # the Canvas swap needs this process
            reused.append(_timed(paths, folder / f"reused{k}", Canvas, **kw))
            fresh.append(_timed(paths, folder / f"fresh{k}", FreshCanvas, **kw))
        r, f = min(reused), min(fresh)
        print(f"{args.compare_modules} modules, best of {args.repeats}: reused figures {r:.2f} s, "
              f"fresh figures {f:.2f} s, fresh/reused = {f / r:.2f}x")


if __name__ == "__main__":
    main()
