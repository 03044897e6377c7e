"""The Typer app and its error boundary: a LorascopeError (a sentence meant for a person)
becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import typer
from typer.core import TyperGroup

from lorascope.errors import LorascopeError


class _Group(TyperGroup):
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


app = typer.Typer(
    cls=_Group,
    name="lorascope",
    help="Record, analyse and compare what LoRA's A and B matrices do while they train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
