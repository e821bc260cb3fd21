"""Running one stage: preflight checks, then load → train (shared loop) → save/merge → evaluate.

`prepare` does every check that can fail on the user's input — data files, image paths, the
rationale file, the `init_from` chain — without touching torch models, so a bad input is one line
before anything heavy starts (the pipeline preflights all four stages this way). A post whose image
is missing or undecodable follows `data.bad_image` (mmkp_edge.images.post_image): "text-only" (the
default; CMKP ships without its images) trains and evaluates it from its text and reports the
count, "error" refuses the data here, before any model loads. Long posts are cut to the model's
context minus `eval.max_new_tokens` (train.student.prompt_budget), in training and evaluation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mmkp_edge.errors import InputError
from mmkp_edge.images import BadImage, post_image
from mmkp_edge.posts import Post, read_posts

from .. import rundir
from ..student import ADAPTER_DIR, MERGED_DIR, ImageStats, prompt_budget, resolve_source
from . import stage_module
from .config import StageConfig


@dataclass(frozen=True)
class StageInputs:
    source: str                        # checkpoint (hub id or folder) or run dir the model loads from
    train_posts: list[Post]            # [] when the stage does not train and data.train is unset
    eval_posts: list[Post]
    rationales: dict[str, str] | None  # post id → rationale (cot / dynamic_cot)
    with_rationale: int                # training posts that have a rationale
    missing_images: int                # posts whose image file does not exist (now text-only)


def _read(path: str, image_root: str | None, limit: int, bad_image: str) -> tuple[list[Post], int]:
    """Posts, and how many of them name an image that was not found (text-only). Under
    bad_image="error" every named image must exist and decode."""
    posts = read_posts(path, image_root=image_root)
    posts = posts[:limit] if limit else posts
    if bad_image == "error":
        for p in posts:
            try:
                post_image(p.image, p.missing_image, "error")
            except BadImage as exc:
                raise InputError(f"{path}: post {p.id}: {exc} (data.bad_image=error; with "
                                 "data.bad_image=text-only it is used text-only)") from None
    return posts, sum(p.missing_image is not None for p in posts)


def _rationales(config: StageConfig, posts: list[Post]) -> dict[str, str]:
    from ..cot import load_rationales

    found = {p.id: p.rationale for p in posts if p.rationale}       # inline `rationale` fields
    if config.rationales:
        found.update(load_rationales(config.rationales, kept_only=config.rationales_kept_only))
    elif not found:
        raise InputError(f"{config.stage} needs rationales: set rationales=FILE (a `mmkp-train "
                         "cot-data` output) or give the training posts a `rationale` field")
    return found


def prepare(config: StageConfig, *, check_init: bool = True, check_rationales: bool = True,
            log: TextIO | None = sys.stderr) -> StageInputs:
    """Every input check of a stage, no model loaded (`check_rationales=False`: the pipeline's
    teacher step writes them before this stage runs)."""
    module = stage_module(config.stage)
    if config.init_from is None:
        source = config.model
        resolve_source(source)                      # a missing local folder fails here
        if Path(source).exists():
            source = str(Path(source).resolve())    # recorded for chaining from any folder
    elif check_init:
        source = rundir.chain_source(config.init_from, config.stage, module.INIT_FROM)
    else:
        source = str(config.init_from)              # the pipeline writes it before this stage runs
    data = config.data
    train, missing = (_read(data.train, data.image_root, data.max_train_posts, data.bad_image)
                      if data.train else ([], 0))
    evals, missing_eval = _read(data.eval_path, data.image_root, data.max_eval_posts, data.bad_image)
    missing += missing_eval
    if missing and log is not None:
        print(f"{config.stage}: warning: {missing} posts name an image file that does not exist; "
              "they are used text-only", file=log, flush=True)
    rationales, with_rationale = None, 0
    if module.NEEDS_RATIONALES and check_rationales:
        rationales = _rationales(config, train)
        with_rationale = sum(p.id in rationales for p in train)
        if not with_rationale:
            raise InputError(f"{config.stage}: none of the {len(train)} training posts has a "
                             f"rationale in {config.rationales} (ids do not match?)")
    return StageInputs(source, train, evals, rationales, with_rationale, missing)


def _trainable_model(student, config: StageConfig):
    """LoRA on the language model, or (tuning=full) every weight except the vision side."""
    import torch

    torch.manual_seed(config.train.seed)             # LoRA init
    if config.train.tuning == "lora":
        from ..lora import apply_lora
        return apply_lora(student.model, student.family, config.lora, student.processor.tokenizer)
    model = student.model
    frozen = {id(p) for m in student.family.vision_modules(model) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return model


def _save(model, student, config: StageConfig, path: Path) -> None:
    if config.train.tuning == "lora":
        from ..lora import merge, save_adapter
        save_adapter(model, student.processor, path / ADAPTER_DIR)
        if config.merge:
            merge(path)
    else:
        model.save_pretrained(path / MERGED_DIR, safe_serialization=True)
        student.processor.save_pretrained(path / MERGED_DIR)


def run_stage(config: StageConfig, *, resume: bool = False, overwrite: bool = False,
              log: TextIO | None = sys.stderr, on_step: Callable[[dict], Any] | None = None) -> Path:
    """Run one stage end to end; returns its run dir (metrics.json, predictions.jsonl, …).

    Under torchrun / accelerate launch every rank runs this; rank 0 alone writes the run dir,
    saves/merges and evaluates while the others wait (`train.distributed`)."""
    from ..distributed import session

    with session(config.train.device) as (world, device):
        log = log if world.is_main else None
        return _run(config, world, device, resume=resume, overwrite=overwrite, log=log,
                    on_step=on_step)


def _run(config: StageConfig, world, device, *, resume: bool, overwrite: bool,
         log: TextIO | None, on_step: Callable[[dict], Any] | None) -> Path:
    module = stage_module(config.stage)
    inputs = prepare(config, log=log)
    path = rundir.run_path(config.runs_dir, config.stage, config.name)
    if module.make_plan is not None:
        world.check_batch(config.train.batch_size)
    world.barrier()                     # every rank has read its inputs before rank 0 writes
    if world.is_main:
        if resume:
            rundir.check_resumable(path, config)
        rundir.prepare_dir(path, resume=resume, overwrite=overwrite)
        rundir.write_config(path, config, rundir.run_info(config.stage, inputs.source))
    if log is not None:
        print(f"{config.stage}: {len(inputs.train_posts)} training posts"
              + (f" ({inputs.with_rationale} with a rationale)" if inputs.rationales is not None else "")
              + f", {len(inputs.eval_posts)} {config.data.eval_split} posts, from {inputs.source}"
              f" → {path}" + (f" ({world.size} processes)" if world.parallel else ""),
              file=log, flush=True)
    world.barrier()

    from ..loop import train
    from ..student import load_student

    if config.train.cpu_threads:
        import torch
        torch.set_num_threads(config.train.cpu_threads)
    student = load_student(inputs.source, device=device, image_splitting=config.image_splitting)
    model, summary, train_stats = student.model, None, ImageStats()
    if module.make_plan is not None:
        model = _trainable_model(student, config)
        plan = module.make_plan(config, inputs.rationales)
        summary = train(model, student.processor, inputs.train_posts, plan, config.train, path,
                        resume=resume, label=config.stage, log=log, on_step=on_step, world=world,
                        stats=train_stats,
                        max_prompt_tokens=prompt_budget(model, config.eval.max_new_tokens))
        if world.is_main:
            _save(model, student, config, path)
    if world.is_main:
        _evaluate(config, module, model, student, inputs, summary, path, log,
                  None if world.parallel else train_stats)
    world.barrier()                     # the next stage (or caller) reads merged/ and metrics.json
    return path


def _evaluate(config: StageConfig, module, model, student, inputs: StageInputs, summary,
              path: Path, log: TextIO | None, train_stats: ImageStats | None) -> None:
    """Greedy evaluation, predictions.jsonl and metrics.json (rank 0 only). `train_stats`: what
    training's rendering changed (None under DDP, where each rank saw only its shard)."""
    from ..evaluate import evaluate
    stats = ImageStats()
    think = config.eval.think or module.THINK
    result = evaluate(model, student.processor, inputs.eval_posts, think,
                      batch_size=config.eval.batch_size, max_new_tokens=config.eval.max_new_tokens,
                      train_keyphrases=[k for p in inputs.train_posts for k in p.keyphrases] or None,
                      stats=stats, log=log, label=f"{config.stage} eval")
    train_figures = None
    if summary is not None:
        train_figures = {"steps": summary.steps, "final_loss": summary.final_loss,
                         "tokens_per_s": summary.tokens_per_s, "wall_s": summary.wall_s,
                         "cot_fraction": summary.cot_fraction, "n_posts": len(inputs.train_posts),
                         "with_rationale": inputs.with_rationale if inputs.rationales is not None
                         else None, "resumed_from": summary.resumed_from}
    trained = train_stats if summary is not None else None
    images = {"missing": inputs.missing_images, "unusable_eval": stats.unusable,
              "unusable_train": trained.unusable if trained else None}
    cut = {"eval": stats.truncated, "train": trained.truncated if trained else None}
    if log is not None and (images["unusable_eval"] or images["unusable_train"]):
        print(f"{config.stage}: posts with an unreadable image, used text-only: "
              f"{images['unusable_train']} training, {images['unusable_eval']} eval",
              file=log, flush=True)
    if log is not None and (cut["eval"] or cut["train"]):
        print(f"{config.stage}: posts cut to fit the model's context: {cut['train']} training, "
              f"{cut['eval']} eval", file=log, flush=True)
    rundir.write_predictions(path / rundir.PREDICTIONS, result.predictions)
    rundir.write_json(path / rundir.METRICS, rundir.metrics_record(
        config, inputs.source, {**result.metrics, "truncated_posts": cut}, train_figures, images))


def finished(path: str | os.PathLike) -> bool:
    return (Path(path) / rundir.METRICS).is_file()
