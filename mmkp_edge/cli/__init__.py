"""Command-line entry points: thin click commands that parse, build a config and call a library
function. `entry()` gives every command the same failure contract: a user's mistake is one line on
stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from ..errors import InputError


def entry(command: click.Command, prog: str) -> Callable[[list[str] | None], int]:
    """Wrap a click command as a console-script `main(argv=None)` with one-line errors."""

    def main(argv: list[str] | None = None) -> int:
        try:
            result = command.main(args=argv, prog_name=prog, standalone_mode=False)
        except InputError as exc:
            click.echo(f"{prog}: error: {exc}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"{prog}: error: {exc.format_message()}", err=True)
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo(f"{prog}: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)
        code = result if isinstance(result, int) else 0
        if argv is None:
            sys.exit(code)
        return code

    return main
