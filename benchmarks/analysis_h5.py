"""Analysis speed from a real recording file: writes a synthetic GPT-2-shaped recording in format
v1 (docs/format.md: chunks of one snapshot, float32, no compression) and times the default
`lorascope analyze` work (stats and health) reading it module by module, as the CLI does.

    OMP_NUM_THREADS=1 python benchmarks/analysis_h5.py --layers 1 --snapshots 2000 --path /tmp/rec.h5

The file is written once and reused when it already has the asked shape (delete it to rewrite).
A cold read needs the page cache dropped, which this script does not do: the times are for a file
the OS has cached (the usual case right after recording) unless the cache was dropped by hand."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

import lorascope  # noqa: E402
from lorascope.analysis import tables  # noqa: E402
from benchmarks.analysis_speed import GPT2, synthetic  # noqa: E402

__all__ = ["write_recording", "time_default"]


def write_recording(path: Path, layers: int, T: int, rank: int = 16, seed: int = 0) -> Path:
    """A finished format-v1 recording of `layers` GPT-2 blocks (4 LoRA modules each) × T snapshots."""
    path = Path(path)
    names = [f"transformer.h.{l}.{role}" for l in range(layers) for role in GPT2]
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                if len(f["snapshots/step"]) == T and json.loads(f["modules"].attrs["order"]) == names:
                    return path
        except (OSError, KeyError):
            pass
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update({"lorascope_format": 1, "lorascope_version": "bench", "run_name": "bench",
                        "config": "{}", "environment": "{}", "record": "{}", "schedule": "{}",
                        "planned_steps": T, "storage_dtype": "float32", "compression": "none",
                        "status": np.bytes_(b"complete".ljust(16, b"\0"))})
        f["snapshots/step"] = np.arange(T, dtype=np.int64)
        f["snapshots/micro_step"] = np.arange(T, dtype=np.int64)
        f["snapshots/time"] = np.arange(T, dtype=np.float64)
        f["scalars/step"] = np.arange(T, dtype=np.int64)
        f["scalars/loss"] = 3.0 / np.sqrt(1.0 + np.arange(T, dtype=np.float64))
        f["updates/step"] = np.arange(T, dtype=np.int64)
        g = f.create_group("modules")
        g.attrs["order"] = json.dumps(names)
        for name in names:
            layer, role = int(name.split(".")[2]), name.split(".", 3)[3]
            out_f, in_f = GPT2[role]
            A, B = synthetic(T, out_f, in_f, rank, rng)
            m = g.create_group(name)
            m.attrs.update({"name": name, "rank": rank, "alpha": 2.0 * rank, "scaling": 2.0,
                            "in_features": in_f, "out_features": out_f, "layer_index": layer})
            m.create_dataset("A", data=A, chunks=(1, rank, in_f), maxshape=(None, rank, in_f))
            m.create_dataset("B", data=B, chunks=(1, out_f, rank), maxshape=(None, out_f, rank))
            del A, B
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


def time_default(path: Path, options: tables.Options | None = None, cold: bool = False) -> float:
    """Seconds for stats + health over every module of the recording, reading from the file."""
    if cold:
        drop_cached(path)
    t0 = time.perf_counter()
    with lorascope.open(path) as rec:
        tables.analyze(rec, ("stats",), options or tables.Options(), health=True)
    return time.perf_counter() - t0


VARIANTS = {
    "default": tables.Options(),
    "prefetch": tables.Options(prefetch=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--snapshots", type=int, default=2000)
    ap.add_argument("--path", type=Path, default=Path("/tmp/lorascope_analysis_bench.h5"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="drop the file from the OS cache before each run")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = ap.parse_args()
    t0 = time.perf_counter()
    write_recording(args.path, args.layers, args.snapshots)
    print(f"recording {args.path} ({args.path.stat().st_size / 2**30:.2f} GiB) ready in {time.perf_counter() - t0:.1f} s")
    names = args.variants.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeat):  # interleaved, so that the machine's load hits every variant alike
        for n in names:
            times[n].append(time_default(args.path, VARIANTS[n], args.cold))
            print(f"  {n:14s} {times[n][-1]:6.2f} s", flush=True)
    for n in names:
        print(f"{n:14s} stats + health: median {np.median(times[n]):.2f} s, best {min(times[n]):.2f} s")


if __name__ == "__main__":
    main()
