"""`mmkp-train`: one command group; each subcommand lives beside the code it drives and is
registered here with one line. `mmkp-train --config RECIPE` (no subcommand) runs the progressive
pipeline, like `mmkp-train pipeline --recipe RECIPE`. The `demo` subcommand drives export and the
runtime too, so it is attached from above the layers (demo/cli.py, the console script's target);
training never imports export."""

from __future__ import annotations

import click

from mmkp_edge.cli import entry


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--config", "recipe", type=click.Path(exists=True, dir_okay=False),
              help="Run the whole pipeline from this recipe (as `mmkp-train pipeline --recipe`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="With --config: override one recipe key (repeatable).")
@click.pass_context
def cli(ctx: click.Context, recipe: str | None, overrides: tuple[str, ...]) -> None:
    """Train the mmkp-edge student.

    \b
    Examples:
      mmkp-train --config train/recipes/progressive.yaml --set data.train=train.jsonl \\
        --set data.test=test.jsonl --set rationales=rationales.jsonl
      mmkp-train init-tiny runs/tiny-student
      mmkp-train sft --set model=runs/tiny-student --set data.train=train.jsonl \\
        --set data.test=test.jsonl --set train.steps=100
      mmkp-train pipeline --set model=runs/tiny-student --set data.train=train.jsonl \\
        --set data.test=test.jsonl --set rationales=rationales.jsonl
    """
    if ctx.invoked_subcommand is not None:
        if recipe or overrides:
            raise click.UsageError("--config/--set before a subcommand: pass them to the subcommand")
        return
    if recipe is None:
        click.echo(ctx.get_help())
        return
    from .stages.command import pipeline_command
    ctx.invoke(pipeline_command, recipe=recipe, overrides=overrides, resume=False, overwrite=False)


def _register() -> None:
    """Every subcommand lives beside the code it drives; add one line here for a new one."""
    from .compose import init_student_command
    from .cot.command import cot_data_command
    from .lora import merge_command
    from .stages.command import STAGE_COMMANDS, pipeline_command
    from .tiny import init_tiny_command

    for command in (init_tiny_command, init_student_command, merge_command, cot_data_command, *STAGE_COMMANDS,
                    pipeline_command):
        cli.add_command(command)


_register()

main = entry(cli, "mmkp-train")

if __name__ == "__main__":
    main()
