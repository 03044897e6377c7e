"""Analysis speed and memory on a recording file, as `lorascope analyze` meets it: a synthetic
GPT-2-shaped recording (rank 16 on c_attn, attn.c_proj, c_fc and mlp.c_proj of `--layers` blocks)
written through the Recorder's own writer (`lorascope.h5.file.RecordingFile`), so that its
layout is a real recording's: each snapshot appends one chunk per matrix, and a module's series
lies spread through the file, one piece per snapshot. The default `lorascope analyze` work
(stats and health) is then timed per variant, each in a fresh process, reading module by module.

    OMP_NUM_THREADS=1 python benchmarks/analysis_h5.py --layers 12 --snapshots 2000   # issue 5: 48 x 2,000
    OMP_NUM_THREADS=1 python benchmarks/analysis_h5.py --layers 1 --snapshots 500 --cold

Per variant: wall seconds, CPU seconds (user, system), and the peak resident memory above the
process's baseline against the largest module's A and B series (the memory bound). `--cold`
drops the file from the OS page cache before each run (POSIX_FADV_DONTNEED on this file only):
a recording analysed long after it was written. Without it the first run reads what the page
cache holds, so the runs are interleaved and repeated. The file is kept and reused when it has
the asked shape (delete it to rewrite)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["write_recording", "drop_cached", "VARIANTS"]

GPT2 = {"attn.c_attn": (2304, 768), "attn.c_proj": (768, 768), "mlp.c_fc": (3072, 768), "mlp.c_proj": (768, 3072)}
LAYOUT_TAG = "recorder-writer-v1"  # bump when the way the file is written changes
# What each variant changes in analysis.Options.
VARIANTS = {"default": {}, "prefetch": {"prefetch": True}, "one-thread": {"workers": 1}}


def _names(layers: int) -> list[str]:
    return [f"transformer.h.{layer}.{role}" for layer in range(layers) for role in GPT2]


def _is_ready(path: Path, names: list[str], T: int) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get("bench_layout") == LAYOUT_TAG and len(f["snapshots/step"]) == T
                    and json.loads(f["modules"].attrs["order"]) == names)
    except (OSError, KeyError, ValueError):
        return False


def write_recording(path: Path, layers: int, T: int, rank: int = 16, seed: int = 0) -> Path:
    """A finished recording of `layers` GPT-2 blocks × T snapshots. A starts kaiming-uniform, B
    at zero, and both walk with steps that shrink as 1/√t, snapshot after snapshot."""
    from lorascope.h5.format import FORMAT_VERSION
    from lorascope.h5.file import FileLayout, ModuleSpec, RecordingFile

    path = Path(path)
    names = _names(layers)
    if _is_ready(path, names, T):
        return path
    specs = []
    for index, name in enumerate(names):
        layer, role = int(name.split(".")[2]), name.split(".", 3)[3]
        out_f, in_f = GPT2[role]
        specs.append(ModuleSpec(name, {"name": name, "index": index, "rank": rank, "alpha": 2.0 * rank,
                                       "scaling": 2.0, "in_features": in_f, "out_features": out_f,
                                       "layer_index": layer, "kind": "lorascope", "init": "kaiming_uniform"},
                                (rank, in_f), (out_f, rank)))
    attrs = {"lorascope_format": FORMAT_VERSION, "lorascope_version": "bench", "run_name": "bench",
             "config": {}, "environment": {}, "record": {}, "schedule": {}, "planned_steps": T,
             "storage_dtype": "float32", "compression": "none", "bench_layout": LAYOUT_TAG}
    rng = np.random.default_rng(seed)
    weights = []
    for s in specs:
        A = (rng.uniform(-1, 1, s.a_shape) / np.sqrt(s.a_shape[1])).astype(np.float32)
        weights += [A, np.zeros(s.b_shape, np.float32)]
    noise = [np.empty_like(w) for w in weights]
    tmp = path.with_suffix(".partial.h5")
    file = RecordingFile(tmp, FileLayout(attrs, specs))
    try:
        for t in range(T):
            if t:
                for w, n in zip(weights, noise):
                    rng.standard_normal(dtype=np.float32, out=n)
                    n *= 2e-3 / np.sqrt(1.0 + t)
                    w += n
            file.write_snapshot(t, t, float(t), weights)
            if t % 50 == 49:
                file.commit()
        file.close("complete")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with h5py.File(tmp, "r+") as f:
        f.attrs["bench_layout"] = LAYOUT_TAG
    tmp.replace(path)
    return path


def drop_cached(path: Path) -> None:
    """Asks the OS to forget this file's cached pages (POSIX_FADV_DONTNEED; only this file), so
    that the next read comes from disk: the case of analysing a recording written long ago."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _child(path: Path, variant: str) -> dict:
    """One timed run in this (fresh) process: stats + health over every module."""
    import lorascope
    from lorascope import analysis

    with lorascope.open(path) as rec:  # imports and the file's index first: the baseline
        largest = max((m.A.shape[0] * (int(np.prod(m.A.shape[1:])) + int(np.prod(m.B.shape[1:]))) * 4
                       for m in rec.modules.values()), default=0)
        base = _peak_rss()
        c0, t0 = os.times(), time.perf_counter()
        analysis.analyze(rec, ("stats",), analysis.Options(**VARIANTS[variant]), health=True)
        wall, c1 = time.perf_counter() - t0, os.times()
    return {"variant": variant, "wall_s": wall, "user_s": c1.user - c0.user, "sys_s": c1.system - c0.system,
            "peak_above_baseline": _peak_rss() - base, "largest_module": largest}


def run(path: Path, variants: list[str], repeat: int, cold: bool) -> list[dict]:
    """Each variant `repeat` times, interleaved, each in a fresh process."""
    results = []
    for _ in range(repeat):
        for v in variants:
            if cold:
                drop_cached(path)
            out = subprocess.run([sys.executable, __file__, "--child", v, "--path", str(path)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"  {v:11s} {r['wall_s']:6.1f} s wall, CPU {r['user_s']:5.1f} user + {r['sys_s']:5.1f} sys, "
                  f"peak +{r['peak_above_baseline'] / 2**20:6.0f} MiB = "
                  f"{r['peak_above_baseline'] / r['largest_module']:.2f}x the largest module", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--snapshots", type=int, default=2000)
    ap.add_argument("--path", type=Path, default=None, help="default: /tmp/lorascope_bench_<layers>x<snapshots>.h5")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each variant (0: only write the file)")
    ap.add_argument("--cold", action="store_true", help="drop the file from the OS cache before each run")
    ap.add_argument("--variants", default="default,prefetch", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = args.path or Path(f"/tmp/lorascope_bench_{args.layers}x{args.snapshots}.h5")
    if args.child:
        print(json.dumps(_child(path, args.child)))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    t0 = time.perf_counter()
    write_recording(path, args.layers, args.snapshots)
    print(f"recording {path}: {4 * args.layers} modules x {args.snapshots} snapshots, "
          f"{path.stat().st_size / 2**30:.2f} GiB, ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results = run(path, variants, args.repeat, args.cold)
    for v in variants if results else ():
        mine = [r for r in results if r["variant"] == v]
        walls = [r["wall_s"] for r in mine]
        peak = max(r["peak_above_baseline"] / r["largest_module"] for r in mine)
        print(f"{v:11s} stats + health{' (cold)' if args.cold else ''}: median {np.median(walls):.1f} s, "
              f"best {min(walls):.1f} s, peak {peak:.2f}x the largest module")


if __name__ == "__main__":
    main()
