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


def _register() -> None:
    """Every subcommand lives beside the code it drives; add one line here for a new one."""
    from .cot.command import cot_data_command
    from .demo.command import demo_command
    from .lora import merge_command
    from .stages.command import STAGE_COMMANDS, pipeline_command
    from .tiny import init_tiny_command

    for command in (init_tiny_command, merge_command, cot_data_command, *STAGE_COMMANDS,
                    pipeline_command, demo_command):
        cli.add_command(command)


_register()

main = entry(cli, "mmkp-train")

if __name__ == "__main__":
    main()
