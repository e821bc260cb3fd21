"""`mmkp-train`: one command group; each subcommand lives beside the code it drives and is
registered here with one line."""

from __future__ import annotations

import click

from mmkp_edge.cli import entry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train the mmkp-edge student.

    \b
    Example:
      mmkp-train init-tiny runs/tiny-student
    """


# Subcommands (one line each):
from .tiny import init_tiny_command; cli.add_command(init_tiny_command)  # noqa: E402,E702
from .lora import merge_command; cli.add_command(merge_command)  # noqa: E402,E702
from .cot.command import cot_data_command; cli.add_command(cot_data_command)  # noqa: E402,E702


main = entry(cli, "mmkp-train")

if __name__ == "__main__":
    main()
