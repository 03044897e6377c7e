"""`lorascope analyze`: the registered tables of `lorascope.analysis` for recordings, written as CSV
or Parquet; health findings are printed as warnings. Parses, calls `analysis.analyze`, writes."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer

from lorascope.analysis import TABLES
from lorascope.cli.app import app
from lorascope.errors import UsageError
from lorascope.outputs import OutputGuard

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["analyze", "write_table", "write_text", "output_paths", "findings_path", "check_output_folder"]

_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".csv": lambda df, p: df.to_csv(p, index=False),
    ".parquet": lambda df, p: _to_parquet(df, p),
}


def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    try:
        df.to_parquet(path, index=False)
    except ImportError:
        raise UsageError("writing Parquet needs pyarrow: pip install 'lorascope[parquet]', or write .csv") from None


def output_paths(output: Path, names: list[str]) -> dict[str, Path]:
    """One table goes to `output` itself; several go beside it as `<stem>.<table><suffix>`."""
    if output.suffix.lower() not in _WRITERS:
        raise UsageError(f"the output must end in {' or '.join(_WRITERS)}, got {output.name!r}")
    if len(names) == 1:
        return {names[0]: output}
    return {n: output.with_name(f"{output.stem}.{n}{output.suffix}") for n in names}


def check_output_folder(folder: Path) -> None:
    """Creates the folder the tables go to and makes sure a file can be written there, so that a
    bad --output fails before the analysis rather than after it."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"cannot write the tables to {folder}: {existing} is a file, not a folder; choose another --output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write the tables to {folder} ({exc.strerror or exc}); "
                         "choose an --output folder you can write to") from None


def write_table(df: pd.DataFrame, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _WRITERS[path.suffix.lower()](df, path)
    except OSError as exc:  # a full disk, a folder removed meanwhile, a table name taken by a folder
        raise UsageError(f"could not write {path} ({exc.strerror or exc}); free some space or choose another --output") from None


def findings_path(output: Path) -> Path:
    """Where the findings' sentences go: `<stem>.findings.txt` beside the tables."""
    return output.with_name(f"{output.stem}.findings.txt")


def write_text(lines: list[str], path: Path) -> None:
    try:
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"could not write {path} ({exc.strerror or exc}); free some space or choose another --output") from None


def _parse_tables(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return TABLES.names()
    unknown = [n for n in names if n not in TABLES]
    if unknown or not names:
        raise UsageError(f"unknown table {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(TABLES.names())}")
    return list(dict.fromkeys(names))


def _tables_help() -> str:
    return "Comma-separated tables, or all. " + "; ".join(f"{n}: {TABLES.description(n)}" for n in TABLES.names()) + "."


@app.command()
def analyze(
    recordings: Annotated[list[Path], typer.Argument(help="Recording files (.h5).", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="out.csv or out.parquet; several tables go to out.<table>.csv.", dir_okay=False)],
    tables: Annotated[str, typer.Option(help=_tables_help())] = "stats",
    modules: Annotated[str, typer.Option(help="Glob over module names to analyse, such as '*.attn.*'.")] = "*",
    fit_samples: Annotated[int, typer.Option(help="Entries per snapshot the distribution fits use, a fixed random subset (0: all); the fits table's column n.")] = 2048,
    fit_steps: Annotated[int, typer.Option(help="Snapshots fitted per matrix, evenly spaced with the first and last (0: all); the fits table's columns fitted_steps, recorded_steps.")] = 50,
    quantile_samples: Annotated[int, typer.Option(help="Entries per snapshot the quantiles use, a fixed random subset (0: all, exact); the stats table's column quantile_n; the same entries as the fits. Everything else covers every entry.")] = 2048,
    workers: Annotated[int, typer.Option(help="Threads working on one module at a time; each computation is cut along its snapshots among them.")] = 2,
    prefetch: Annotated[bool, typer.Option(help="Read the next module while analysing this one (memory: two modules' series instead of one); for a recording not in the OS cache (cold 48 x 2,000: 98 s -> 47 s).")] = False,
    criterion: Annotated[str, typer.Option(help="How the best family is chosen: bic or aic.")] = "bic",
    max_steps: Annotated[int, typer.Option(help="Snapshots used by similarity, histograms and the tables against W0 (0: all).")] = 100,
    intruder_k: Annotated[int, typer.Option(help="intruders: top singular vectors of W0 + ΔW examined.")] = 10,
    intruder_epsilon: Annotated[float, typer.Option(help="intruders: a vector intrudes when its largest |cos| with W0's singular vectors is below this.")] = 0.5,
    bins: Annotated[int, typer.Option(help="Histogram bins (shared by every run and step of a module).")] = 64,
    health: Annotated[bool, typer.Option(help="Run the health checks and print what they find.")] = True,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a Dask scheduler (tcp://host:8786) whose workers analyse the modules, each task opening the recordings by path (the same tables); the files must be at the same paths there. Needs pip install 'lorascope[dask]'.")] = None,
) -> None:
    """Write tidy analysis tables (one row per run x module x matrix x step) for recordings.

    It also prints the findings (the sentences the report opens with, each with its numbers,
    for the runs given) and writes them to <out>.findings.txt beside the tables. The kinds that
    read a table not asked for (stats: when B leaves zero, stalls; fits: distribution families)
    are named as left out.
    """
    import lorascope
    from lorascope.analysis import Options, analyze as run_analysis
    from lorascope.analysis.findings import evidence, find
    from lorascope.analysis.selection import module_names
    from lorascope.progress import StepProgress

    names = _parse_tables(tables)
    paths = output_paths(output, names)
    guard = OutputGuard(recordings)  # no table is written over a recording (run.csv -o run.csv)
    for path in (*paths.values(), findings_path(output)):
        guard.check(path)
    if criterion not in ("aic", "bic"):
        raise UsageError(f"--criterion takes aic or bic, got {criterion!r}")
    if workers < 1:
        raise UsageError(f"--workers takes a count of threads of at least 1, got {workers}")
    if min(fit_samples, fit_steps, quantile_samples, max_steps) < 0:
        raise UsageError("--fit-samples, --fit-steps, --quantile-samples and --max-steps take 0 (all) or a positive count")
    if bins < 1:
        raise UsageError(f"--bins takes a count of at least 1, got {bins}")
    options = Options(fit_samples=fit_samples or None, fit_steps=fit_steps or None,
                      quantile_samples=quantile_samples or None, criterion=criterion, max_steps=max_steps or None,
                      bins=bins, workers=workers, prefetch=prefetch, intruder_k=intruder_k,
                      intruder_epsilon=intruder_epsilon)
    check_output_folder(output.parent)  # after the flags: a typo in one leaves no folder behind
    recs = [lorascope.open(p) for p in recordings]
    try:
        total = sum(name in r.modules for name in module_names(recs, modules) for r in recs)
        with StepProgress(total, label="module") as bar:
            result = run_analysis(recs, names, options, health=health, modules=modules, scheduler=scheduler,
                                  progress=lambda done, _total, _label: bar.update(done))
        found = find(evidence(recs, result.tables, result.findings))
    finally:
        for r in recs:
            close = getattr(r, "close", None)
            if close is not None:
                close()
    for name in names:
        write_table(result.tables[name], paths[name])
        typer.echo(f"{name}: {len(result.tables[name])} rows -> {paths[name]}")
    sentences = findings_path(output)
    write_text(found.lines(), sentences)
    typer.echo(f"findings: {len(found.sentences)} sentences -> {sentences}")
    for sentence in found.sentences:
        if sentence.kind != "health":  # the health findings' sentences go to stderr below
            typer.echo(f"  {sentence}")
    if found.left_out:
        typer.echo(f"  {found.left_out_note()}; add it to --tables for them")
    for note in result.notes:  # modules a table has no rows for, and why
        typer.echo(f"note: {note}", err=True)
    for finding in result.findings:
        typer.echo(str(finding), err=True)  # "error: ..." or "warning: ..."
