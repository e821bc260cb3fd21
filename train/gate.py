"""The Dynamic-CoT gate: which samples train on a reasoning target (DESIGN.md §4).

The paper's idea is that a student should only learn to think where thinking helps: a sample whose
*direct* target the model already predicts well (low loss) keeps the direct target, and only hard
samples (loss > γ) that have a valid teacher rationale get `<think>…</think><answer>…</answer>`.
That is what teaches the model *when* to think (the `auto` mode) and stops over-thinking.

Kept as pure functions over per-sample losses so the rule itself is unit-tested apart from any
model. γ is fixed, or a quantile of a running window of recent losses (e.g. q = 0.7 sends the
hardest 30 % to reasoning). Variants:
- `online`:  score and gate every batch under the current model;
- `offline`: score the whole training set once (after SFT), gate once, then train on that fixed mix;
- `switch`:  plain direct-target training until the running mean loss falls under `switch_loss`,
             then gate like `online` (the switch never turns back).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmkp_edge.errors import InputError

Variant = Literal["online", "offline", "switch"]


@dataclass(frozen=True)
class GateConfig:
    variant: Variant = "online"
    gamma: float | None = None        # fixed loss threshold; None → use `quantile`
    quantile: float = 0.7             # γ = this quantile of recent direct-target losses
    window: int = 1024                # how many recent sample losses the quantile sees
    switch_loss: float | None = None  # `switch`: start gating when mean loss < this (default γ)

    def validate(self) -> None:
        if self.gamma is not None and self.gamma < 0:
            raise InputError(f"dynamic.gamma must be >= 0, got {self.gamma}")
        if not 0.0 < self.quantile < 1.0:
            raise InputError(f"dynamic.quantile must be in (0, 1), got {self.quantile}")
        if self.window < 1:
            raise InputError(f"dynamic.window must be >= 1, got {self.window}")
        if self.variant == "switch" and self.switch_loss is None and self.gamma is None:
            raise InputError("dynamic.variant=switch needs dynamic.switch_loss or a fixed dynamic.gamma")


def choose_reasoning(losses: Sequence[float], has_rationale: Sequence[bool], gamma: float) -> list[bool]:
    """True where a sample trains on its reasoning target: loss > γ and a rationale exists."""
    if len(losses) != len(has_rationale):
        raise ValueError(f"{len(losses)} losses but {len(has_rationale)} rationale flags")
    return [bool(loss > gamma and ok) for loss, ok in zip(losses, has_rationale)]


def quantile_gamma(losses: Sequence[float], q: float) -> float:
    """γ as the q-quantile of `losses` (linear interpolation, numpy's default)."""
    if not len(losses):
        raise ValueError("no losses to take a quantile of")
    return float(np.quantile(np.asarray(losses, dtype=np.float64), q))


class Gate:
    """Stateful wrapper used by the training loop: call `decide` once per batch."""

    def __init__(self, config: GateConfig) -> None:
        config.validate()
        self.config = config
        self.history: deque[float] = deque(maxlen=config.window)
        self.switched = config.variant != "switch"
        self.last_gamma: float | None = None

    def gamma(self) -> float:
        """Current γ: fixed, or the quantile of the loss window."""
        if self.config.gamma is not None:
            return self.config.gamma
        return quantile_gamma(list(self.history), self.config.quantile)

    def decide(self, losses: Sequence[float], has_rationale: Sequence[bool]) -> list[bool]:
        """Record this batch's direct-target losses and choose each sample's target."""
        self.history.extend(float(x) for x in losses)
        if not self.switched:
            threshold = self.config.switch_loss if self.config.switch_loss is not None else self.config.gamma
            if float(np.mean(list(self.history))) < threshold:
                self.switched = True
            else:
                self.last_gamma = None
                return [False] * len(losses)
        self.last_gamma = self.gamma()
        return choose_reasoning(losses, has_rationale, self.last_gamma)

    def state(self) -> dict:
        """JSON-able state, so a resumed run gates exactly like an uninterrupted one."""
        return {"history": list(self.history), "switched": self.switched,
                "last_gamma": self.last_gamma}

    def load_state(self, state: dict) -> None:
        self.history = deque((float(x) for x in state["history"]), maxlen=self.config.window)
        self.switched = bool(state["switched"])
        self.last_gamma = state["last_gamma"]
