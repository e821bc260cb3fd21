"""The Dynamic-CoT gate rule and the recipe loader, as pure functions (no model)."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, strategies as st

from mmkp_edge.errors import InputError
from train import config_loader
from train.gate import Gate, GateConfig, choose_reasoning, quantile_gamma


@given(st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=40), st.floats(0, 10))
def test_gate_picks_exactly_the_samples_above_gamma_with_rationales(samples, gamma):
    losses = [s[0] for s in samples]
    has = [s[1] for s in samples]
    chosen = choose_reasoning(losses, has, gamma)
    assert chosen == [loss > gamma and ok for loss, ok in samples]


def test_quantile_gamma_sends_the_hardest_share_to_reasoning():
    losses = [float(i) for i in range(100)]
    gate = Gate(GateConfig(quantile=0.7, window=100))
    chosen = gate.decide(losses, [True] * 100)
    assert sum(chosen) == 30 and all(chosen[70:]) and not any(chosen[:70])
    assert gate.last_gamma == pytest.approx(quantile_gamma(losses, 0.7))


def test_quantile_uses_a_running_window():
    gate = Gate(GateConfig(quantile=0.5, window=4))
    gate.decide([10.0, 10.0, 10.0, 10.0], [True] * 4)
    # the window now holds only the new batch: median 1.5, so 2 and 3 go to reasoning
    assert gate.decide([0.0, 1.0, 2.0, 3.0], [True] * 4) == [False, False, True, True]


def test_switch_trains_direct_until_the_mean_loss_falls_under_the_threshold():
    gate = Gate(GateConfig(variant="switch", gamma=1.0, window=2))
    assert gate.decide([5.0, 5.0], [True, True]) == [False, False] and not gate.switched
    assert gate.decide([0.5, 1.2], [True, True]) == [False, True] and gate.switched
    assert gate.decide([5.0, 5.0], [True, False]) == [True, False]          # never turns back


def test_gate_config_is_validated():
    with pytest.raises(InputError, match="quantile"):
        GateConfig(quantile=1.5).validate()
    with pytest.raises(InputError, match="switch"):
        GateConfig(variant="switch").validate()


@dataclass(frozen=True)
class Inner:
    r: int = 8            # rank
    targets: tuple[str, ...] = ("q_proj",)


@dataclass(frozen=True)
class Outer:
    name: str
    lr: float = 1e-4
    think: Literal["off", "on", "auto"] = "auto"
    gamma: float | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.lr <= 0:
            raise InputError("lr must be > 0")


def test_recipe_then_fields_then_overrides(tmp_path):
    (tmp_path / "r.yaml").write_text("name: a\nlr: 0.01\ninner:\n  r: 4\n")
    cfg = config_loader.load(Outer, tmp_path / "r.yaml", ["inner.targets=q_proj,v_proj", "flag=true"],
                       lr=0.5)
    assert cfg == Outer(name="a", lr=0.5, flag=True, inner=Inner(r=4, targets=("q_proj", "v_proj")))
    config_loader.save(cfg, tmp_path / "out.yaml")
    assert config_loader.load(Outer, tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("text, overrides, message", [
    ("name: a\nbogus: 1\n", [], "unknown config key 'bogus'"),
    ("name: a\ninner:\n  rank: 4\n", [], "unknown config key 'inner.rank'"),
    ("name: a\nlr: fast\n", [], "lr: expected float"),
    ("name: a\nthink: maybe\n", [], "think: must be one of off, on, auto"),
    ("name: a\n", ["inner.r=2.5"], "inner.r: expected an integer"),
    ("name: a\n", ["lr"], "--set expects key=value"),
    ("name: a\n", ["lr=-1"], "lr must be > 0"),
    ("name: [a\n", [], "r.yaml:2: invalid YAML"),
    ("lr: 1\n", [], "missing 1 required positional argument: 'name'"),
])
def test_recipe_errors_are_one_line_and_name_the_key(tmp_path, text, overrides, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        config_loader.load(Outer, tmp_path / "r.yaml", overrides)


def test_gate_state_round_trip_continues_identically():
    a = Gate(GateConfig(quantile=0.5, window=3))
    a.decide([1.0, 5.0], [True, True])
    b = Gate(GateConfig(quantile=0.5, window=3))
    b.load_state(a.state())
    assert a.decide([2.0, 4.0], [True, True]) == b.decide([2.0, 4.0], [True, True])
    assert a.last_gamma == b.last_gamma and list(a.history) == list(b.history)
