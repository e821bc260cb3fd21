"""`mmkp-train`: one command group; each subcommand lives beside the code it drives and is
registered here with one line."""

from __future__ import annotations

import click

from mmkp_edge.cli import entry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train the mmkp-edge student.

    \b
    Examples:
      mmkp-train init-tiny runs/tiny-student
      mmkp-train sft --set model=runs/tiny-student --set data.train=train.jsonl \\
        --set data.test=test.jsonl --set train.steps=100
      mmkp-train pipeline --set model=runs/tiny-student --set data.train=train.jsonl \\
        --set data.test=test.jsonl --set rationales=rationales.jsonl
    """


# Subcommands (one line each):
from .tiny import init_tiny_command; cli.add_command(init_tiny_command)  # noqa: E402,E702
from .lora import merge_command; cli.add_command(merge_command)  # noqa: E402,E702
from .cot.command import cot_data_command; cli.add_command(cot_data_command)  # noqa: E402,E702
from .stages.command import STAGE_COMMANDS; [cli.add_command(c) for c in STAGE_COMMANDS]  # noqa: E402,E702
from .stages.command import pipeline_command; cli.add_command(pipeline_command)  # noqa: E402,E702
from .demo.command import demo_command; cli.add_command(demo_command)  # noqa: E402,E702


main = entry(cli, "mmkp-train")

if __name__ == "__main__":
    main()
