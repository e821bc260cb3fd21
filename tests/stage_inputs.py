"""Small inputs for the training-stage tests: a tiny student, demo posts and a rationale file."""

from __future__ import annotations

import json
from pathlib import Path

from mmkp_edge.posts import read_jsonl
from train.demo_data import make_demo_data
from train.tiny import init_tiny


def make_inputs(root: Path, n_posts: int = 40) -> dict[str, str]:
    """tiny student + demo splits + rationales for every other training post (ids as strings)."""
    demo = make_demo_data(root / "demo", n_posts=n_posts, seed=0, image_size=16)
    tiny = init_tiny(root / "tiny")
    rationales = root / "rationales.jsonl"
    with open(rationales, "w", encoding="utf-8") as fh:
        for post in read_jsonl(demo.train)[::2]:
            fh.write(json.dumps({"id": post.id, "kept": True,
                                 "rationale": f"The post is about {post.keyphrases[0]}."}) + "\n")
    return {"model": str(tiny), "train": str(demo.train), "valid": str(demo.valid),
            "test": str(demo.test), "rationales": str(rationales), "root": str(root)}


def quick(inputs: dict[str, str], stage_prefix: str = "", **extra: str) -> list[str]:
    """`--set` overrides for a seconds-long stage run on the tiny student (`stage_prefix="common."`
    puts the per-stage keys under a pipeline's `common`)."""
    shared = {"model": inputs["model"], "data.train": inputs["train"], "data.test": inputs["test"],
              "runs_dir": str(Path(inputs["root"]) / "runs")}
    per_stage = {"train.steps": "3", "train.batch_size": "4", "train.warmup_steps": "1",
                 "train.lr": "1e-2", "train.cpu_threads": "1", "train.log_every": "1",
                 "eval.max_new_tokens": "12"}
    pairs = {**shared, **{stage_prefix + k: v for k, v in per_stage.items()}, **extra}
    return [f"{k}={v}" for k, v in pairs.items()]


class Interrupt(Exception):
    """Raised by `stop_after`'s hook: a run killed after a given step (for resume tests)."""


def stop_after(step):
    """An `on_step` hook that interrupts the training loop once `step` is done."""
    def hook(record):
        if record["step"] == step:
            raise Interrupt
    return hook
