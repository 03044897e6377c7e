"""The real `lorascope` command line in a separate process, for the reliability tests.

Two launchers run the same entry point (`lorascope.cli.main`) with the same argv:

- ``"fork"`` forks this (already imported) interpreter: the child is a real process with its own
  signal handlers, exit code, stdout/stderr and resource limits, but skips the 10 s of importing
  torch and transformers again, so the default suite can afford it;
- ``"exec"`` runs ``python cli.py ...`` from the repository root, exactly what a user types.

An exception that escapes ``main`` in a forked child is printed by ``traceback`` and exits 1, as
the interpreter does, so a test that looks for ``Traceback`` sees the same thing either way."""
from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

__all__ = ["ROOT", "QUICK_RECORD", "LAUNCHERS", "CliProcess", "Finished", "run_cli", "start_cli", "warm_up", "warm", "LAUNCH"]

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("fork", "exec")

# A tiny-gpt2 run that starts in a fraction of a second: few examples, one eval batch, no samples.
QUICK_RECORD = ["--model", "tiny-gpt2", "--set", "data.max_examples=48", "--set", "eval_batches=1",
                "--set", "generate_samples=0", "--batch-size", "2"]

_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Finished:
    code: int  # negative: killed by that signal
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def _limits(file_size: int | None) -> Callable[[], None]:
    """What the child sets up before running: a file-size limit stands in for a full disk (a
    write past it fails with EFBIG instead of raising SIGXFSZ, which is ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


class CliProcess:
    """One running `lorascope ARGS...`; ``signal``/``wait`` talk to it by its pid."""

    def __init__(self, args: list[str], workdir: Path, launcher: str = "fork",
                 file_size: int | None = None, prepare: Callable[[], None] | None = None) -> None:
        """``prepare`` runs in a forked child just before the command (a test's stand-in for the
        machine, such as a disk with little free space); it needs the fork launcher."""
        if launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}")
        if prepare is not None and launcher != "fork":
            raise ValueError("prepare= runs in a forked child: use the fork launcher")
        self._prepare = prepare
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = [str(a) for a in args]
        self._out = workdir / f"cli-{time.monotonic_ns()}.out"
        self._err = self._out.with_suffix(".err")
        self._popen: subprocess.Popen | None = None
        self._code: int | None = None
        setup = _limits(file_size)
        if launcher == "exec":
            with open(self._out, "wb") as out, open(self._err, "wb") as err:
                self._popen = subprocess.Popen(
                    [sys.executable, str(ROOT / "cli.py"), *self.args], cwd=ROOT, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, env={**os.environ, **_ENV}, preexec_fn=setup,
                )
            self.pid = self._popen.pid
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child never returns into the test
                self._child(setup)
            self.pid = pid

    def _child(self, setup: Callable[[], None]) -> None:
        code = 1
        try:
            os.environ.update(_ENV)
            setup()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            for fd, path in ((1, self._out), (2, self._err)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            # the test runner's capture objects would swallow output; write to the new fds
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            sys.stdin = io.TextIOWrapper(os.fdopen(0, "rb", closefd=False))
            # signals as a fresh interpreter has them (a test runner may have changed them)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            import torch

            torch.set_num_threads(1)
            if self._prepare is not None:
                self._prepare()
            sys.argv = ["lorascope", *self.args]
            from lorascope.cli import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # what the interpreter would do with an uncaught exception
                import traceback

                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def poll(self) -> int | None:
        if self._code is None:
            if self._popen is not None:
                self._code = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._code = os.waitstatus_to_exitcode(status)
        return self._code

    def wait(self, timeout: float = 600.0) -> Finished:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self.poll_blocking()
                raise TimeoutError(f"lorascope {' '.join(self.args)} ran past {timeout:.0f} s:\n{self.stderr()}")
            time.sleep(0.02)
        return Finished(self._code, self._out.read_text(errors="replace"), self.stderr())

    def poll_blocking(self) -> None:
        if self._popen is not None:
            self._code = self._popen.wait()
        else:
            _, status = os.waitpid(self.pid, 0)
            self._code = os.waitstatus_to_exitcode(status)

    def stderr(self) -> str:
        return self._err.read_text(errors="replace") if self._err.exists() else ""

    def wait_for(self, text: str, timeout: float = 300.0) -> None:
        """Blocks until ``text`` appears on the child's stderr (a progress line, say)."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if self.poll() is not None:
                raise RuntimeError(f"lorascope exited ({self._code}) before printing {text!r}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self.poll_blocking()
                raise TimeoutError(f"lorascope did not print {text!r} within {timeout:.0f} s")
            time.sleep(0.01)


def start_cli(args: list[str], workdir: Path, launcher: str = "fork", file_size: int | None = None,
              prepare: Callable[[], None] | None = None) -> CliProcess:
    return CliProcess(args, workdir, launcher, file_size, prepare)


def run_cli(args: list[str], workdir: Path, launcher: str = "fork", file_size: int | None = None,
            prepare: Callable[[], None] | None = None, timeout: float = 600.0) -> Finished:
    return CliProcess(args, workdir, launcher, file_size, prepare).wait(timeout)


def warm_up(workdir: Path) -> None:
    """Runs one tiny recording in this process, so that the lazy imports of the training path
    (transformers' model code, the tokenizer, h5py) are done before forking: a forked run then
    starts in a fraction of a second instead of re-importing for twenty."""
    from typer.testing import CliRunner

    from lorascope.cli import app

    out = workdir / "warm-up.h5"
    result = CliRunner().invoke(app, ["record", "-o", str(out), *QUICK_RECORD, "--steps", "1"])
    if result.exit_code != 0:
        raise RuntimeError(f"the warm-up recording failed:\n{result.output}")


# Tests run each case forked (default suite) and as `python cli.py` (slow: 10-30 s of imports each).
LAUNCH = [pytest.param("fork", id="fork"), pytest.param("exec", id="exec", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A work folder, with the training path imported in this process (see ``warm_up``)."""
    folder = tmp_path_factory.mktemp("warm")
    warm_up(folder)
    return folder
