"""The progressive stages: zero_shot → sft → cot → dynamic_cot, one module each.

A stage module says only what is particular to it: `STAGE`, its default eval `THINK` mode, which
recorded stages `init_from` may name (`INIT_FROM`), whether it needs rationales, and `make_plan`
(how each training post's target is chosen; None for evaluate-only). `train.stages.run` does the
rest the same way for all of them: preflight checks, loading, the shared loop, merge, evaluation.

Chaining rules (checked against the `stage` recorded in the run's config.yaml before any model
loads): sft ← zero_shot; cot ← zero_shot | sft; dynamic_cot ← zero_shot | sft | cot; zero_shot
may re-evaluate any run. A zero_shot run passes on the checkpoint it evaluated.
"""

from types import ModuleType

from mmkp_edge.errors import InputError

from . import cot, dynamic_cot, sft, zero_shot
from .config import STAGES, DataConfig, StageConfig

MODULES: dict[str, ModuleType] = {m.STAGE: m for m in (zero_shot, sft, cot, dynamic_cot)}


def stage_module(stage: str) -> ModuleType:
    try:
        return MODULES[stage]
    except KeyError:
        raise InputError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}") from None


__all__ = ["MODULES", "STAGES", "DataConfig", "StageConfig", "stage_module"]
