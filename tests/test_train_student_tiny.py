"""The tiny student checkpoint and the family contract: it reloads like a real checkpoint, decodes
non-degenerately, and the prompt-as-data pieces rebuild the processor's exact token ids."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post
from train.cli import main
from train.collate import encode
from train.families import family_for, family_of
from train.families.idefics3 import Idefics3Family
from train.student import load_student, render


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "student"
    assert main(["init-tiny", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return str(path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_tiny_reloads_offline_with_auto_classes_and_decodes_varied_text(tiny_dir, image_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert (tiny_dir / "model.safetensors").is_file()
    assert not list(tiny_dir.glob("*.bin")) and not list(tiny_dir.glob("*.pkl"))
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert model.config.model_type == "idefics3"
    text = processor.apply_chat_template(prompt.messages("a day at the beach", "", True),
                                         add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[[Image.open(image_path)]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    assert len(new) == 24 and len(set(new)) >= 8, new        # not one token repeated


def test_init_tiny_is_deterministic_per_seed(tiny_dir, tmp_path):
    assert main(["init-tiny", str(tmp_path / "same"), "--seed", "0"]) == 0
    assert main(["init-tiny", str(tmp_path / "other"), "--seed", "1"]) == 0
    for name in ("model.safetensors", "tokenizer.json"):
        assert _sha(tmp_path / "same" / name) == _sha(tiny_dir / name)
    assert _sha(tmp_path / "other" / "model.safetensors") != _sha(tiny_dir / "model.safetensors")


def test_tokenizer_keeps_contract_tags_as_single_tokens(tiny_dir):
    student = load_student(tiny_dir)
    tok = student.processor.tokenizer
    for t in prompt.SPECIAL_TOKENS + ("<image>", "<fake_token_around_image>", "<global-img>",
                                      "<end_of_utterance>", "<|im_start|>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    target = prompt.reasoning_target("sunny day", ["beach", "summer"])
    ids = tok(target, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == target
    assert len(ids) < len(target) / 2          # real BPE merges, not bytes


@pytest.mark.parametrize("think", prompt.THINK_MODES)
def test_prompt_pieces_rebuild_processor_token_ids(tiny_dir, image_path, think):
    from tokenizers import Tokenizer

    student = load_student(tiny_dir)
    pieces = student.family.prompt_pieces(student.processor)
    plain = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    posts = [Post("img", "Storm {image} over the city  ", image_path, ocr="STORM WARNING"),
             Post("txt", "Happy birthday to my best friend! ünï")]
    for post in posts:
        expected = encode(student.processor, render(student.processor, post, think)).input_ids
        got = pieces.encode(plain, prompt.user_text(post.text, post.ocr), post.image is not None,
                            prompt.prime(think))
        assert got == expected, post.id
    assert pieces.image_string.count("<image>") == student.family.image_settings(
        student.processor)["tokens_per_image"]


def test_family_registry_and_options(tiny_dir):
    assert isinstance(family_for("smolvlm"), Idefics3Family)
    assert family_of(tiny_dir).name == "idefics3"
    assert family_for("idefics3", image_splitting=True).image_splitting is True
    with pytest.raises(InputError, match="unsupported student model_type 'llama'"):
        family_for("llama")


def test_image_splitting_is_off_by_default_and_recorded(tiny_dir):
    student = load_student(tiny_dir)
    settings = student.family.image_settings(student.processor)
    assert settings["do_image_splitting"] is False and settings["max_image_size"] == 32
    split = load_student(tiny_dir, image_splitting=True)
    assert split.processor.image_processor.do_image_splitting is True


def test_load_student_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(InputError, match="neither a checkpoint"):
        load_student(tmp_path)
    with pytest.raises(InputError, match="no such checkpoint folder"):
        load_student(tmp_path / "missing")
    with pytest.raises(InputError, match="mmkp-test/no-such-model: cannot load the model config"):
        load_student("mmkp-test/no-such-model")          # a hub id, offline in tests
