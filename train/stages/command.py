"""`mmkp-train zero-shot | sft | cot | dynamic-cot | pipeline`: thin click commands.

Each parses a recipe and `--set` overrides into a validated config (bad keys fail here, before any
model loads) and calls one library function. The run dir path and a one-line JSON summary go to
stdout; progress goes to stderr.
"""

from __future__ import annotations

import json
import sys

import click

from .. import config_loader
from .config import StageConfig
from .pipeline import PipelineConfig, comparison, default_recipe, run_pipeline
from .run import run_stage

_STAGE_HELP = {
    "zero_shot": "Evaluate a model as it is (no training); think=off by default.",
    "sft": "Supervised fine-tuning (LoRA) on direct targets <answer>kp1; kp2</answer>.",
    "cot": "Fine-tune-CoT: reasoning targets from a teacher rationale file (think=on at eval).",
    "dynamic_cot": "Dynamic CoT: a per-sample loss gate picks reasoning or direct targets "
                   "(think=auto at eval).",
}

_COMMON = """
Config: the packaged recipe train/recipes/{stage}.yaml, or --recipe FILE, then --set key=value
(repeatable; dotted keys reach sections: train.steps, lora.r, eval.think, dynamic.variant…).
Writes RUNS_DIR/{stage}/NAME/ (config.yaml, metrics.json, predictions.jsonl, train_log.jsonl,
checkpoints/, adapter/, merged/). Multi-GPU (DDP): the same command under
`torchrun --nproc_per_node N -m train.cli …`; train.batch_size stays the global micro-batch.
"""


def _recipe_options(fn):
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing run dir.")(fn)
    fn = click.option("--resume", is_flag=True,
                      help="Continue an interrupted run from its last checkpoint.")(fn)
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override one config key (repeatable).")(fn)
    fn = click.option("--recipe", "--config", "recipe", type=click.Path(dir_okay=False),
                      default=None, help="YAML recipe [default: the packaged one].")(fn)
    return fn


def _main_process() -> bool:
    """Under torchrun / accelerate launch only rank 0 prints the result."""
    from ..distributed import World
    return World.from_env().is_main


def _summary(metrics: dict) -> str:
    scores = metrics["scores"]["all"]
    return json.dumps({"stage": metrics["stage"], "f1@1": scores["f1@1"], "f1@3": scores["f1@3"],
                       "map@5": scores["map@5"], "think_rate": metrics["think_rate"],
                       "tokens_per_post": metrics["tokens_per_post"],
                       "steps": metrics["train"]["steps"]})


def stage_command(stage: str) -> click.Command:
    cli_name = stage.replace("_", "-")

    @_recipe_options
    def command(recipe: str | None, overrides: tuple[str, ...], resume: bool, overwrite: bool) -> None:
        data = config_loader.read_recipe(recipe) if recipe else {}
        if data.get("stage", stage) != stage:
            raise click.UsageError(f"{recipe} is a {data['stage']} recipe, not {stage}")
        config = config_loader.load(StageConfig, recipe or default_recipe(stage), overrides, stage=stage)
        path = run_stage(config, resume=resume, overwrite=overwrite, log=sys.stderr)
        if _main_process():
            click.echo(str(path))
            click.echo(_summary(json.loads((path / "metrics.json").read_text(encoding="utf-8"))))

    example = (f"mmkp-train {cli_name} --set model=runs/tiny-student --set name=demo \\\n"
               "  --set data.train=demo/train.jsonl --set data.test=demo/test.jsonl"
               + ("" if stage == "zero_shot" else " --set train.steps=100")
               + ("" if stage in ("zero_shot", "sft") else
                  " \\\n  --set rationales=demo/rationales.jsonl --set init_from=runs/sft/demo"))
    command.__doc__ = (f"{_STAGE_HELP[stage]}\n{_COMMON.format(stage=stage)}\n\b\nExample:\n"
                       + "\n".join("  " + line for line in example.splitlines()))
    return click.command(cli_name, context_settings={"help_option_names": ["-h", "--help"]})(command)


@click.command("pipeline", context_settings={"help_option_names": ["-h", "--help"]})
@_recipe_options
def pipeline_command(recipe: str | None, overrides: tuple[str, ...], resume: bool,
                     overwrite: bool) -> None:
    """Run zero_shot → sft → cot → dynamic_cot and print a comparison table.

    Config: train/recipes/progressive.yaml or --recipe FILE, then --set. Shared keys: name,
    runs_dir, model, rationales, data.*, stages, dynamic_from; `common.<key>` overrides every
    stage's config, `<stage>.<key>` one stage's (on top of train/recipes/<stage>.yaml). Every
    stage is checked before the first model loads. --resume skips finished stages.

    \b
    Example:
      mmkp-train pipeline --set model=runs/tiny-student --set data.train=demo/train.jsonl \\
        --set data.test=demo/test.jsonl --set rationales=demo/rationales.jsonl \\
        --set common.train.steps=200 --set cot.eval.max_new_tokens=96
    """
    config = config_loader.load(PipelineConfig, recipe or default_recipe("progressive"), overrides)
    results = run_pipeline(config, resume=resume, overwrite=overwrite, log=sys.stderr)
    table, rows = comparison(results)
    if _main_process():
        click.echo(table)
        click.echo(json.dumps({"pipeline": config.name, "stages": rows}))


STAGE_COMMANDS = [stage_command(s) for s in ("zero_shot", "sft", "cot", "dynamic_cot")]
