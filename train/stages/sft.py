"""SFT: every post trains on its direct target `<answer>kp1; kp2</answer>` (evaluated think=off)."""

from __future__ import annotations

from collections.abc import Sequence

from mmkp_edge import prompt
from mmkp_edge.posts import Post

from ..loop import Targets

STAGE = "sft"
THINK = "off"                        # default eval think mode
INIT_FROM = ("zero_shot",)           # stages whose run dir `init_from` may name
NEEDS_RATIONALES = False


class DirectTargets:
    """The plain supervised plan; stateless."""

    def prepare(self, model, processor, posts: Sequence[Post]) -> None:
        pass

    def targets(self, model, processor, posts: Sequence[Post]) -> Targets:
        return Targets([prompt.direct_target(p.keyphrases) for p in posts], [False] * len(posts))

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def make_plan(config, rationales: dict[str, str] | None) -> DirectTargets:
    return DirectTargets()
