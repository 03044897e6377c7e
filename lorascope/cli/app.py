"""The Typer app, its table of commands and its error boundary.

Commands load when they run: ``COMMANDS`` names each command's module and the one line that
``lorascope --help`` shows, so the top-level help lists every command without importing any of
them (and none of their torch, pandas or matplotlib). Running ``lorascope NAME`` (or
``lorascope NAME --help``) imports that one module, which registers its command on ``app`` with
``@app.command()``, and the group builds the click command from that registration.

The error boundary: a LorascopeError (a sentence meant for a person) becomes one line on stderr
and exit code 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from lorascope.errors import LorascopeError

__all__ = ["app", "COMMANDS", "Command"]


@dataclass(frozen=True)
class Command:
    module: str  # importing it registers the command on `app`
    help: str  # the first line of the command's docstring (a test keeps the two equal)


# The order is the order in --help.
COMMANDS: dict[str, Command] = {
    "record": Command("lorascope.cli.record", "Train with LoRA and record A and B after every optimizer step into an HDF5 file."),
    "sweep": Command("lorascope.cli.sweep", "Run a grid of recorded trainings that differ in the named axes, then compare them."),
    "info": Command("lorascope.cli.info", "Summarise a recording: run, status, config, modules, snapshots, size and health."),
    "analyze": Command("lorascope.cli.analyze", "Write tidy analysis tables (one row per run x module x matrix x step) for recordings."),
    "report": Command("lorascope.cli.report", "Write an HTML report (index.html plus PNG figures) comparing recordings."),
    "repair": Command("lorascope.cli.repair", "Clear the write flags a killed run left in its recording, so HDF5's tools and plain h5py open it."),
}


class _Pending(TyperCommand):
    """Stands in for a command whose module is not imported yet: enough for the top-level help
    (name and one line) and for the group's suggestions on a typo."""

    def __init__(self, name: str, entry: Command) -> None:
        super().__init__(name=name, short_help=entry.help)
        self.entry = entry

    def load(self):
        """Imports the module and builds the click command it registered."""
        importlib.import_module(self.entry.module)
        for info in app.registered_commands:
            if (info.name or typer.main.get_command_name(info.callback.__name__)) == self.name:
                return typer.main.get_command_from_info(
                    info, pretty_exceptions_short=app.pretty_exceptions_short,
                    rich_markup_mode=app.rich_markup_mode,
                )
        raise RuntimeError(f"{self.entry.module} registered no command {self.name!r} on lorascope.cli.app")


class _Group(TyperGroup):
    def __init__(self, *, commands=None, **kwargs) -> None:
        registered = dict(commands or {})  # commands whose modules were imported already
        table = {name: registered.pop(name, None) or _Pending(name, entry) for name, entry in COMMANDS.items()}
        super().__init__(commands={**table, **registered}, **kwargs)

    def get_command(self, ctx, cmd_name: str):
        command = self.commands.get(cmd_name)
        if isinstance(command, _Pending):
            command = self.commands[cmd_name] = command.load()
        return command

    def get_help_option(self, ctx):
        # Typer (0.29) coerces a parameter's value through pydantic unless it is a bool already,
        # and the group's --help flag defaults to None: `lorascope CMD --help` then imported
        # pydantic (0.2-0.4 s here) for a flag that was not given. A bool default skips that.
        option = super().get_help_option(ctx)
        if option is not None and option.default is None:
            option.default = False
        return option

    def format_commands(self, ctx, formatter) -> None:
        # from the table, whole: listing the commands must not import them
        limit = formatter.width - 6 - max(map(len, self.commands))
        rows = [(name, COMMANDS[name].help if name in COMMANDS else command.get_short_help_str(limit))
                for name, command in self.commands.items() if not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LorascopeError as exc:
            # one plain line, no traceback, even when the sentence quotes a multi-line library message
            typer.echo("error: " + " ".join(str(exc).split()), err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


def _root() -> None:
    """The group's own callback: with it the app is a group even before any command module has
    registered its command."""


app = typer.Typer(
    cls=_Group,
    name="lorascope",
    help="Record, analyse and compare what LoRA's A and B matrices do while they train.",
    callback=_root,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
