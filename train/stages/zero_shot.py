"""Zero-shot: evaluate a model as it is (a hub checkpoint, or any earlier run via init_from)."""

from __future__ import annotations

STAGE = "zero_shot"
THINK = "off"
INIT_FROM = ("zero_shot", "sft", "cot", "dynamic_cot")   # re-evaluating any run is allowed
NEEDS_RATIONALES = False
make_plan = None                                          # evaluate only: no training
