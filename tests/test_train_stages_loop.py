"""The shared training loop: exact resume, the Dynamic-CoT gate acting on what is really trained,
the schedule and the data order."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmkp_edge import prompt
from mmkp_edge.posts import read_jsonl
from stage_inputs import Interrupt, make_inputs, quick, stop_after
from train import config_loader
from train.collate import IGNORE, train_batch
from train.loop import LoopConfig, lr_at, sample_indices
from train.stages.config import StageConfig
from train.stages.pipeline import default_recipe
from train.stages.run import run_stage
from train.student import load_student

from tolerance import student_atol


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.set_num_threads(1)
    return make_inputs(tmp_path_factory.mktemp("loop"))


def _config(inputs, stage, **extra):
    return config_loader.load(StageConfig, default_recipe(stage), quick(inputs, **extra), stage=stage)


def _log(path):
    return [json.loads(line) for line in open(Path(path) / "train_log.jsonl")]




@pytest.mark.parametrize("stage", ["sft", "dynamic_cot"])
def test_resume_continues_with_identical_losses(inputs, stage):
    extra = {"train.steps": "6", "train.checkpoint_every": "3", "train.grad_accum": "2",
             "lora.dropout": "0.2", "rationales": inputs["rationales"], "dynamic.window": "8",
             "dynamic.quantile": "0.5", "eval.max_new_tokens": "4"}
    straight = run_stage(_config(inputs, stage, name="straight", **extra), log=None)
    broken = _config(inputs, stage, name="broken", **extra)
    with pytest.raises(Interrupt):
        run_stage(broken, log=None, on_step=stop_after(4))       # dies after step 4
    assert [r["step"] for r in _log(Path(broken.runs_dir) / stage / "broken")] == [1, 2, 3, 4]
    resumed = run_stage(broken, resume=True, log=None)             # continues from step 3
    a, b = _log(straight), _log(resumed)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["ids"] for r in a] == [r["ids"] for r in b]
    assert [r["reasoning"] for r in a] == [r["reasoning"] for r in b]
    assert json.loads((resumed / "metrics.json").read_text())["train"]["resumed_from"] == 3
    wa = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _target_lengths(inputs, posts, rationales):
    """Supervised token count of each post's direct and reasoning target."""
    processor = load_student(inputs["model"]).processor
    out = {}
    for p in posts:
        direct = prompt.direct_target(p.keyphrases)
        reason = prompt.reasoning_target(rationales.get(p.id, "x"), p.keyphrases)
        batch = train_batch(processor, [p, p], [direct, reason])
        out[p.id] = (batch["labels"] != IGNORE).sum(dim=1).tolist()      # [direct, reasoning]
    return out


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_dynamic_cot_trains_reasoning_targets_exactly_for_gated_samples(inputs, variant):
    from train.cot import load_rationales

    rationales = load_rationales(inputs["rationales"])
    run = run_stage(_config(inputs, "dynamic_cot", name=variant, rationales=inputs["rationales"],
                            **{"dynamic.variant": variant, "dynamic.quantile": "0.4",
                               "train.steps": "5", "eval.max_new_tokens": "4"}), log=None)
    posts = read_jsonl(inputs["train"])
    lengths = _target_lengths(inputs, posts, rationales)
    records = _log(run)
    assert len(records) == 5
    chosen = []
    for r in records:
        gamma = r["gamma"]
        assert gamma is not None and len(r["direct_losses"]) == len(r["ids"])
        expect = [loss > gamma and pid in rationales for pid, loss in zip(r["ids"], r["direct_losses"])]
        assert r["reasoning"] == expect
        assert r["cot_fraction"] == sum(expect) / len(expect)
        for pid, reason, n in zip(r["ids"], r["reasoning"], r["target_tokens"]):
            assert n == lengths[pid][int(reason)]           # what was trained is what was chosen
        chosen += r["reasoning"]
    assert any(chosen) and not all(chosen)
    if variant == "offline":                                # one scoring pass, one γ, fixed mix
        assert len({r["gamma"] for r in records}) == 1
        decisions = {}
        for r in records:
            for pid, reason in zip(r["ids"], r["reasoning"]):
                assert decisions.setdefault(pid, reason) == reason
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["cot_fraction"] == pytest.approx(sum(chosen) / len(chosen))
    assert metrics["think"] == "auto"


def test_switch_variant_trains_direct_targets_until_the_switch(inputs):
    run = run_stage(_config(inputs, "dynamic_cot", name="switch", rationales=inputs["rationales"],
                            **{"dynamic.variant": "switch", "dynamic.switch_loss": "0.0",
                               "eval.max_new_tokens": "4"}), log=None)
    records = _log(run)
    assert all(r["gamma"] is None and not any(r["reasoning"]) for r in records)
    assert all(r["cot_fraction"] == 0.0 for r in records)


def test_cot_reasoning_targets_follow_the_rationale_file(inputs):
    from train.cot import load_rationales

    rationales = load_rationales(inputs["rationales"])
    run = run_stage(_config(inputs, "cot", name="plain", rationales=inputs["rationales"],
                            **{"eval.max_new_tokens": "4"}), log=None)
    for r in _log(run):
        assert r["reasoning"] == [pid in rationales for pid in r["ids"]]
        assert r["direct_losses"] is None and r["gamma"] is None


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = LoopConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, schedule="cosine")
    lrs = [lr_at(s, cfg, 20) for s in range(1, 21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[-1] == pytest.approx(0.1)
    linear = LoopConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert lr_at(10, linear, 20) == pytest.approx(0.5)


def test_data_order_is_a_seeded_permutation_per_epoch():
    first = sample_indices(0, 10, 10, seed=3)
    second = sample_indices(10, 10, 10, seed=3)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert sample_indices(7, 6, 10, seed=3) == first[7:] + second[:3]
    assert sample_indices(0, 10, 10, seed=4) != first


def test_full_fine_tune_writes_a_merged_checkpoint_and_keeps_vision_frozen(inputs):
    from train.families import family_of

    run = run_stage(_config(inputs, "sft", name="full", **{"train.tuning": "full",
                                                         "eval.max_new_tokens": "4"}), log=None)
    assert not (run / "adapter").exists()
    before = load_student(inputs["model"]).model
    after = load_student(run).model                       # loads run/merged
    family = family_of(inputs["model"])
    vision = {n for m in family.vision_modules(before) for n, _ in m.named_parameters()}
    changed = {n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters())
               if not torch.equal(a, b)}
    assert changed and all("text_model" in n or "lm_head" in n for n in changed), changed
    assert vision


def test_resume_refuses_a_changed_config(inputs):
    from mmkp_edge.errors import InputError

    run_stage(_config(inputs, "sft", name="changed", **{"eval.max_new_tokens": "4"}), log=None)
    with pytest.raises(InputError, match="'train' differs"):
        run_stage(_config(inputs, "sft", name="changed", **{"eval.max_new_tokens": "4",
                                                           "train.lr": "5e-3"}),
                  resume=True, log=None)


def test_gradient_checkpointing_does_not_change_the_losses(inputs):
    extra = {"eval.max_new_tokens": "2", "lora.dropout": "0.2"}
    plain = run_stage(_config(inputs, "sft", name="no-gc", **extra), log=None)
    gc = run_stage(_config(inputs, "sft", name="gc", **extra,
                           **{"train.gradient_checkpointing": "true"}), log=None)
    # recomputing activations in the backward pass is the same math (and the same dropout
    # masks): at most the rounding of two evaluations of the student (tests/tolerance.py); a lost
    # dropout RNG state or a wrong recompute moves the losses by ~1e-1
    losses = [r["loss"] for r in _log(plain)]
    atol = student_atol(losses, load_student(inputs["model"]).model.config)
    assert [r["loss"] for r in _log(gc)] == pytest.approx(losses, rel=0, abs=atol)
