"""Recording size per snapshot against the raw bytes of the matrices. The real Recorder writes two
recordings of a GPT-2-small-shaped LoRA (rank 16 on every attention and MLP projection of all 12
blocks) that differ only in their number of snapshots; the difference in file size divided by the
difference in snapshots is what one more snapshot costs on disk (A and B, the update norms and
the scalars), and the rest is the fixed cost of a file. No training: the weights take small random
steps between snapshots, which is all the file format sees.

    OMP_NUM_THREADS=1 python -m benchmarks.recording_size
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.common import format_bytes, format_table  # noqa: E402
from benchmarks.workloads import build_workload  # noqa: E402

__all__ = ["SizeResult", "measure_sizes", "size_rows"]

_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class SizeResult:
    workload: str
    dtype: str
    compression: str
    values: int  # A and B values per snapshot
    per_snapshot: float  # marginal bytes on disk per snapshot
    fixed: float  # bytes of a file with no snapshot beyond the extrapolation

    @property
    def raw(self) -> int:
        """The bytes of the matrices themselves, in the storage dtype."""
        return self.values * _ELEMENT_BYTES[self.dtype]


def _write(path: Path, model: torch.nn.Module, snapshots: int, dtype: str, compression: str) -> int:
    from lorascope.config import RecordConfig
    from lorascope.record import Recorder

    config = RecordConfig(every=1, dtype=dtype, compression=compression)
    rec = Recorder(path, model, config, run_name=path.stem, total_steps=snapshots - 1)
    params = [p for pair in rec.modules.values() for p in (pair.A, pair.B)]
    generator = torch.Generator().manual_seed(0)
    with rec:
        rec.start()  # snapshot of step 0
        for step in range(1, snapshots):
            with torch.no_grad():
                for p in params:
                    p.add_(1e-3 * torch.randn(p.shape, generator=generator))
            rec.on_optimizer_step(step, {"loss": 1.0 / step})
    return path.stat().st_size


def measure_sizes(workload: str = "gpt2-small", *, dtypes: tuple[str, ...] = ("float32", "float16"),
                  compression: str = "none", few: int = 3, many: int = 11, rank: int = 16) -> list[SizeResult]:
    """Bytes per snapshot for each storage dtype, from two recordings of ``few`` and ``many``
    snapshots (step 0 included)."""
    if many <= few:
        raise ValueError(f"many ({many}) must exceed few ({few})")
    work = build_workload(workload, rank=rank)
    values = sum(p.numel() for p in work.model.parameters() if p.requires_grad)
    results = []
    with tempfile.TemporaryDirectory(prefix="lorascope-size-") as tmp:
        for dtype in dtypes:
            small = _write(Path(tmp) / f"{dtype}-few.h5", work.model, few, dtype, compression)
            large = _write(Path(tmp) / f"{dtype}-many.h5", work.model, many, dtype, compression)
            per = (large - small) / (many - few)
            results.append(SizeResult(workload, dtype, compression, values, per, small - few * per))
    return results


def size_rows(results: list[SizeResult]) -> list[dict]:
    return [{
        "model": r.workload,
        "storage": r.dtype + ("" if r.compression == "none" else f" + {r.compression}"),
        "raw A+B per snapshot": format_bytes(r.raw),
        "on disk per snapshot": format_bytes(r.per_snapshot),
        "disk / raw": f"{r.per_snapshot / r.raw:.4f}",
        "fixed per file": format_bytes(r.fixed),
    } for r in results]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-small")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--compression", default="none")
    args = ap.parse_args(argv)
    print(format_table(size_rows(measure_sizes(args.model, dtypes=tuple(args.dtypes),
                                               compression=args.compression))))


if __name__ == "__main__":
    main()
