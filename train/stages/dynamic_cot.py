"""Dynamic CoT (DESIGN.md §4): the gate picks, per sample, a reasoning or a direct target.

Each sample is scored by the mean NLL of its *direct* target under the current model (no grad,
dropout off); `train.gate` sends samples above γ that have a rationale to the reasoning target.
`online` and `switch` score every micro-batch (the gate keeps the loss window for a quantile γ);
`offline` scores the whole training set once before the first step and keeps that mix. Every step's
record in train_log.jsonl carries the scores, γ and the chosen targets; evaluated think=auto.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmkp_edge import prompt
from mmkp_edge.posts import Post

from ..collate import sample_losses, train_batch
from ..distributed import current
from ..gate import Gate, GateConfig, choose_reasoning, quantile_gamma
from ..loop import Targets
from ..precision import autocast, autocast_dtype
from ..student import prompt_budget

STAGE = "dynamic_cot"
THINK = "auto"
INIT_FROM = ("zero_shot", "sft", "cot")
NEEDS_RATIONALES = True


@torch.no_grad()
def direct_losses(model, processor, posts: Sequence[Post], batch_size: int = 0,
                  max_prompt_tokens: int | None = None) -> list[float]:
    """Per-post mean token NLL of the direct target under `model` (eval mode, then restored), long
    posts cut exactly as for training (`max_prompt_tokens`).

    Under DDP each rank scores its slice of every chunk and the scores are gathered back in order,
    so every rank's gate sees the same global losses (`train.distributed`)."""
    device = next(model.parameters()).device
    world = current()
    was_training = model.training
    model.eval()
    out: list[float] = []
    step = batch_size or len(posts)
    try:
        for start in range(0, len(posts), step):
            chunk = world.shard(posts[start:start + step])
            if not chunk:                                    # fewer posts than ranks
                out += world.gather([])
                continue
            batch = train_batch(processor, chunk, [prompt.direct_target(p.keyphrases) for p in chunk],
                                max_prompt_tokens=max_prompt_tokens)
            labels = batch.pop("labels").to(device)                           # (B, T)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device.type, autocast_dtype("auto", device.type)):
                logits = model(**batch).logits                                 # (B, T, V)
            out += world.gather(sample_losses(logits, labels).tolist())
    finally:
        model.train(was_training)
    return out


class GatedTargets:
    def __init__(self, config: GateConfig, rationales: dict[str, str], score_batch: int,
                 generation_budget: int) -> None:
        self.config, self.rationales, self.score_batch = config, rationales, score_batch
        self.generation_budget = generation_budget    # eval.max_new_tokens: the prompt limit's
        self.gate = Gate(config)
        self.fixed: dict[str, tuple[float, bool]] = {}   # offline: id → (score, reasoning)
        self.fixed_gamma: float | None = None

    def prepare(self, model, processor, posts: Sequence[Post]) -> None:
        if self.config.variant != "offline":
            return
        losses = direct_losses(model, processor, posts, self.score_batch,
                               prompt_budget(model, self.generation_budget))
        gamma = (self.config.gamma if self.config.gamma is not None
                 else quantile_gamma(losses, self.config.quantile))
        chosen = choose_reasoning(losses, [p.id in self.rationales for p in posts], gamma)
        self.fixed = {p.id: (loss, c) for p, loss, c in zip(posts, losses, chosen)}
        self.fixed_gamma = gamma

    def targets(self, model, processor, posts: Sequence[Post]) -> Targets:
        if self.config.variant == "offline":
            losses = [self.fixed[p.id][0] for p in posts]
            reasoning = [self.fixed[p.id][1] for p in posts]
            gamma = self.fixed_gamma
        else:
            losses = direct_losses(model, processor, posts,
                                   max_prompt_tokens=prompt_budget(model, self.generation_budget))
            reasoning = self.gate.decide(losses, [p.id in self.rationales for p in posts])
            gamma = self.gate.last_gamma
        texts = [prompt.reasoning_target(self.rationales[p.id], p.keyphrases) if r
                 else prompt.direct_target(p.keyphrases) for p, r in zip(posts, reasoning)]
        return Targets(texts, reasoning, gamma, losses)

    def state(self) -> dict:
        return {**self.gate.state(),
                "fixed": {k: list(v) for k, v in self.fixed.items()}, "fixed_gamma": self.fixed_gamma}

    def load_state(self, state: dict) -> None:
        self.gate.load_state(state)
        self.fixed = {k: (float(v[0]), bool(v[1])) for k, v in state["fixed"].items()}
        self.fixed_gamma = state["fixed_gamma"]


def make_plan(config, rationales: dict[str, str] | None) -> GatedTargets:
    return GatedTargets(config.dynamic, rationales or {}, config.train.batch_size,
                        config.eval.max_new_tokens)
