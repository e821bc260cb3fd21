"""The progressive pipeline from one config: zero_shot → sft → cot → dynamic_cot, chained run dirs.

Every stage's config is built and validated, and every stage's inputs (data, images, rationales)
preflighted, before the first model loads. Stages chain by `init_from`: sft ← zero_shot (which
passes the base model on), cot ← sft, dynamic_cot ← sft (or cot with `dynamic_from: cot`). With
`resume`, finished stages (metrics.json present) are skipped and an interrupted one continues from
its last checkpoint. The result is four comparable metrics.json files and a table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TextIO

from mmkp_edge.errors import InputError

from .. import config_loader, rundir
from . import stage_module
from .config import DEFAULT_MODEL, STAGES, DataConfig, StageConfig
from .run import finished, prepare, run_stage


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "progressive"                 # run name shared by the four run dirs
    runs_dir: str = "runs"                    # runs_dir/<stage>/<name>
    model: str = DEFAULT_MODEL                # the base model zero_shot evaluates and sft tunes
    rationales: str | None = None             # rationale JSONL for cot and dynamic_cot
    cot_data: dict[str, Any] = field(default_factory=dict)    # if set: write `rationales` with
    #   `mmkp-train cot-data` (CotDataConfig keys: teacher, model, base_url, keep, …; posts =
    #   data.train) right before the first stage that needs them; resumable like the command
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[str, ...] = STAGES          # which stages to run (in this order)
    dynamic_from: Literal["sft", "cot"] = "sft"   # the run dynamic_cot starts from
    common: dict[str, Any] = field(default_factory=dict)       # overrides for every stage
    zero_shot: dict[str, Any] = field(default_factory=dict)    # overrides for one stage …
    sft: dict[str, Any] = field(default_factory=dict)
    cot: dict[str, Any] = field(default_factory=dict)
    dynamic_cot: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "PipelineConfig":
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise InputError(f"stages: unknown stage {unknown[0]!r}" if unknown else
                             "stages: name at least one stage")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise InputError(f"stages must be in pipeline order ({', '.join(STAGES)})")
        if self.cot_data and not self.rationales:
            raise InputError("cot_data needs rationales=FILE: the path it writes and the stages read")
        for name in ("common", "cot_data") + STAGES:
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name}: expected a mapping of stage config keys")
        return self


def default_recipe(stage: str) -> Path:
    """The packaged recipe `train/recipes/<stage>.yaml`."""
    return Path(str(resources.files("train") / "recipes" / f"{stage}.yaml"))


_INIT_ORDER = {"zero_shot": (), "sft": ("zero_shot",), "cot": ("sft", "zero_shot")}


def stage_configs(cfg: PipelineConfig) -> list[StageConfig]:
    """The validated config of every stage to run, chained by init_from."""
    paths: dict[str, str] = {}
    out = []
    for stage in cfg.stages:
        prefer = _INIT_ORDER[stage] if stage in _INIT_ORDER else (cfg.dynamic_from, "sft", "zero_shot")
        parent = next((paths[s] for s in prefer if s in paths), None)
        fields = {"name": cfg.name, "runs_dir": cfg.runs_dir, "model": cfg.model,
                  "rationales": cfg.rationales, "init_from": parent,
                  "data": config_loader.to_dict(cfg.data)}
        fields = config_loader.merge(config_loader.merge(fields, cfg.common), getattr(cfg, stage))
        if fields.get("stage", stage) != stage:
            raise InputError(f"{stage}: overrides may not change the stage")
        config = config_loader.load(StageConfig, default_recipe(stage), (), **fields)
        out.append(config)
        paths[stage] = str(rundir.run_path(cfg.runs_dir, stage, cfg.name))
    return out


def cot_data_config(cfg: PipelineConfig):
    """The teacher step's config (posts = the training split, output = `rationales`), or None."""
    if not cfg.cot_data:
        return None
    from ..cot.config import CotDataConfig

    fields = config_loader.merge(cfg.cot_data, {"posts": cfg.data.train, "output": cfg.rationales,
                                                "image_root": cfg.data.image_root})
    return config_loader.load(CotDataConfig, None, (), **fields)


def run_pipeline(cfg: PipelineConfig, *, resume: bool = False, overwrite: bool = False,
                 log: TextIO | None = sys.stderr) -> list[dict]:
    """Run the stages (and the teacher step, if configured); returns each stage's metrics.json."""
    configs = stage_configs(cfg)
    teacher = cot_data_config(cfg)
    for config in configs:                                # fail on bad input before any model loads
        prepare(config, check_init=False, log=None, check_rationales=teacher is None)
        path = rundir.run_path(config.runs_dir, config.stage, config.name)
        if path.exists() and any(path.iterdir()) and not (resume or overwrite):
            raise InputError(f"{path} already exists; use --resume to continue the pipeline, "
                             "--overwrite to replace it, or --set name=OTHER")
    from ..distributed import session

    with session(configs[0].train.device) as (world, _):   # DDP: one process group, all stages
        return _run_stages(configs, teacher, world, resume=resume, overwrite=overwrite, log=log)


def _run_stages(configs: list[StageConfig], teacher, world, *, resume: bool, overwrite: bool,
                log: TextIO | None) -> list[dict]:
    results = []
    for config in configs:
        if teacher is not None and stage_module(config.stage).NEEDS_RATIONALES:
            from ..cot.run import run_cot_data
            if world.is_main:
                run_cot_data(teacher, log=log)            # skips posts already in the file
            world.barrier()
            teacher = None
        path = rundir.run_path(config.runs_dir, config.stage, config.name)
        if resume and finished(path):
            if log is not None and world.is_main:
                print(f"{config.stage}: finished earlier, skipped ({path})", file=log, flush=True)
        else:
            run_stage(config, resume=resume, overwrite=overwrite, log=log)
        results.append(json.loads((path / rundir.METRICS).read_text(encoding="utf-8")))
    return results


_COLUMNS = (("F1@1", ("all", "f1@1")), ("F1@3", ("all", "f1@3")), ("F1@5", ("all", "f1@5")),
            ("MAP@5", ("all", "map@5")), ("pres F1@3", ("present", "f1@3")),
            ("abs F1@3", ("absent", "f1@3")), ("unseen F1@3", ("unseen", "f1@3")))


def comparison(results: list[dict]) -> tuple[str, list[dict]]:
    """A table for people and rows for machines (scores in percent)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"stage": r["stage"], "think": r["think"]}
        for label, (subset, key) in _COLUMNS:
            value = r["scores"].get(subset, {}).get(key)
            row[label] = None if value is None else round(100 * value, 2)
        row.update({"think rate": round(r["think_rate"], 3), "tok/post": round(r["tokens_per_post"], 1),
                    "steps": r["train"]["steps"], "loss": r["train"]["final_loss"],
                    "cot frac": r["train"]["cot_fraction"]})
        rows.append(row)
    header = list(rows[0]) if rows else []

    def cell(v, column: str) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if column in ("think rate", "loss", "cot frac") else f"{v:.2f}"
        return str(v)

    body = [[cell(row[h], h) for h in header] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)] if rows else []
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
             for line in [header] + body]
    return "\n".join(lines), rows
