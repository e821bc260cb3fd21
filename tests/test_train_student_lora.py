"""LoRA moves only adapters (vision frozen), and merging gives the same model as the peft one."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post
from students import train_steps
from train.cli import main
from train.collate import train_batch
from train.lora import LoraSettings, apply_lora, save_adapter, trainable_parameters
from train.student import load_student
from train.tiny import init_tiny

from tolerance import student_atol


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    path = tmp_path_factory.mktemp("imgs") / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return [Post("a", "Sunset at the beach", str(path), ("sunset", "beach")),
            Post("b", "Big game tonight", None, ("football", "game night"))]


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture(scope="module")
def trained(tiny_dir, posts, tmp_path_factory):
    """A peft student after two optimizer steps, saved as a run dir with adapter/."""
    student = load_student(tiny_dir)
    model = apply_lora(student.model, student.family, LoraSettings(r=4, alpha=8, dropout=0.0))
    batch = train_batch(student.processor, posts, [prompt.direct_target(p.keyphrases) for p in posts])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch, steps=2)   # two: LoRA B starts at zero, so A moves from step 2
    run = tmp_path_factory.mktemp("run") / "sft"
    save_adapter(model, student.processor, run / "adapter")
    return model, student, batch, before, run


def test_lora_step_moves_every_adapter_and_no_base_parameter(trained):
    model, student, _, before, _ = trained
    adapters = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert adapters and {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    assert all(".text_model." in n for n in adapters)
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name in adapters), name
    for module in student.family.vision_modules(model):
        assert not any(p.requires_grad for p in module.parameters())
    counts = trainable_parameters(model)
    assert 0 < counts["trainable"] < counts["total"]


def test_adapter_is_saved_in_peft_format_with_the_processor(trained):
    *_, run = trained
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "processor_config.json").is_file() and (adapter / "tokenizer.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4


def _merge_atol(model, ref) -> float:
    """(W + s·B·A)x and Wx + s·B(Ax) are equal in exact arithmetic and differ in fp32 rounding only:
    every layer's sums of ≤ 128 terms (the tiny student's widest: intermediate 128, connector 32·2²),
    6 chained (2 decoder + 2 vision layers, connector, lm_head), each ≤ n·2^-24 relative to the
    values: 6·128·2^-23·max|logit| ≈ 5e-4 for logits ~5 (tests/tolerance.py). Measured here:
    ~1e-5 (the old fixed atol of 1e-5 failed at 1.016e-5 on an AMX Xeon); a wrong merge moves
    logits by ~1 (test_trained_adapter_changes_the_output checks the margin)."""
    return student_atol(ref, model.config)


def test_merged_model_equals_peft_model(trained, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, _, batch, _, run = trained
    with torch.no_grad():
        ref = model(**_inputs(batch)).logits                                  # (B, T, V)
        atol = _merge_atol(model, ref)
        assert main(["merge", str(run / "adapter"), "-o", str(tmp_path / "merged")]) == 0
        plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
        assert not any("lora" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(plain(**_inputs(batch)).logits, ref, atol=atol, rtol=0)
        # a run dir: adapter only → peft model; after `merge RUN` → its merged/ checkpoint
        via_adapter = load_student(run)
        torch.testing.assert_close(via_adapter.model(**_inputs(batch)).logits, ref, atol=atol, rtol=0)
        assert main(["merge", str(run)]) == 0
        via_merged = load_student(run)
        assert not hasattr(via_merged.model, "peft_config")
        torch.testing.assert_close(via_merged.model(**_inputs(batch)).logits, ref, atol=atol, rtol=0)
    assert json.loads((run / "merged" / "merged_from.json").read_text())["family"] == "idefics3"


def test_trained_adapter_changes_the_output(trained, tiny_dir):
    model, _, batch, _, _ = trained
    base = load_student(tiny_dir).model
    with torch.no_grad():
        ref = model(**_inputs(batch)).logits
        moved = (ref - base(**_inputs(batch)).logits).abs().max()
    assert moved > 1e-2
    assert moved > 100 * _merge_atol(model, ref)     # the merge tolerance cannot hide a lost adapter


def test_vision_lora_is_opt_in(tiny_dir):
    student = load_student(tiny_dir)
    model = apply_lora(student.model, student.family, LoraSettings(r=2, vision=True))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".vision_model." in n for n in names) and any(".text_model." in n for n in names)


def test_bad_lora_settings_and_merge_inputs_fail_with_one_line(tiny_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="r must be"):
        LoraSettings(r=0).validate()
    student = load_student(tiny_dir)
    with pytest.raises(InputError, match="lora:"):
        apply_lora(student.model, student.family, LoraSettings(targets=("no_such_proj",)))
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(tmp_path)])
    assert exc.value.code == 2
    assert "no peft adapter" in capsys.readouterr().err
