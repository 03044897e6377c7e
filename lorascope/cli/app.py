"""The Typer app and its error boundary: a LorascopeError (a sentence meant for a person)
becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from lorascope.errors import LorascopeError


class _UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # one plain line, no box, no traceback
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LorascopeError as exc:
            raise _UserError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None


app = typer.Typer(
    cls=_Group,
    name="lorascope",
    help="Record, analyse and compare what LoRA's A and B matrices do while they train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
