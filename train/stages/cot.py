"""Fine-tune-CoT: posts with a kept teacher rationale train on `<think>why</think><answer>…</answer>`,
the rest on the direct target (the run records how many had one). Evaluated think=on."""

from __future__ import annotations

from collections.abc import Sequence

from mmkp_edge import prompt
from mmkp_edge.posts import Post

from ..loop import Targets

STAGE = "cot"
THINK = "on"
INIT_FROM = ("zero_shot", "sft")
NEEDS_RATIONALES = True


class RationaleTargets:
    """Reasoning target wherever a rationale exists; stateless."""

    def __init__(self, rationales: dict[str, str]) -> None:
        self.rationales = rationales

    def prepare(self, model, processor, posts: Sequence[Post]) -> None:
        pass

    def targets(self, model, processor, posts: Sequence[Post]) -> Targets:
        texts, reasoning = [], []
        for p in posts:
            why = self.rationales.get(p.id)
            texts.append(prompt.reasoning_target(why, p.keyphrases) if why
                         else prompt.direct_target(p.keyphrases))
            reasoning.append(bool(why))
        return Targets(texts, reasoning)

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def make_plan(config, rationales: dict[str, str] | None) -> RationaleTargets:
    return RationaleTargets(rationales or {})
