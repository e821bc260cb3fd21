"""init-student composes a working student from a text-only checkpoint, and the prompt's tags
are added to a checkpoint that lacks them, initialised from their pieces, trained beside LoRA and
kept through merge and reload."""

import json

import pytest
import torch

from mmkp_edge import prompt
from mmkp_edge.posts import Post
from students import save_text_model, train_steps
from tolerance import fp32_atol
from train.cli import main
from train.collate import train_batch
from train.compose import compose
from train.lora import LoraSettings, apply_lora, save_adapter
from train.student import load_student
from train.tokens import missing_tags, tag_id, text_pieces, trainable_token_ids
from train.tiny import init_tiny

POSTS = [Post("a", "Sunset at the beach tonight", None, ("sunset", "beach")),
         Post("b", "Big game tonight, what a win", None, ("football",))]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return save_text_model(tmp_path_factory.mktemp("text") / "llama")


@pytest.fixture(scope="module")
def composed(text_dir, tmp_path_factory):
    return compose(str(text_dir), tmp_path_factory.mktemp("student") / "s", vision="tiny-8-32")


def test_composed_student_keeps_the_text_model(text_dir, composed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(text_dir).eval()
    tok = AutoTokenizer.from_pretrained(text_dir)
    student = load_student(composed)
    ids = tok("the storm hit the city last night", return_tensors="pt")["input_ids"]
    assert student.processor.tokenizer(
        "the storm hit the city last night", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        want = lm(ids).logits                                                  # (1, T, V)
        got = student.model(input_ids=ids).logits[..., :want.shape[-1]]       # (1, T, V')
    # the same math by two code paths (Llama vs Idefics3 text model): rounding only
    assert float((got - want).abs().max()) <= fp32_atol(
        want, reduction=lm.config.intermediate_size, depth=lm.config.num_hidden_layers + 1)


def test_composed_student_has_the_text_models_chat_format_and_end_token(composed):
    student = load_student(composed)
    tok = student.processor.tokenizer
    assert missing_tags(tok) == []
    assert tok.eos_token == "<|im_end|>"
    text = student.processor.apply_chat_template(prompt.messages("hi", "", True),
                                                 add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n<image>") and text.endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
    pieces = student.family.prompt_pieces(student.processor)        # self-checked against the template
    assert pieces.eos_token == "<|im_end|>"


def test_new_tag_rows_start_as_the_mean_of_their_pieces(composed):
    student = load_student(composed)
    tok = student.processor.tokenizer
    emb = student.model.get_input_embeddings().weight
    for tag in prompt.SPECIAL_TOKENS:
        pieces = text_pieces(tok, tag)
        assert len(pieces) >= 2 and tag_id(tok, tag) not in pieces
        assert torch.allclose(emb[tag_id(tok, tag)], emb[pieces].mean(0))


def _tagless_copy(src, dst):
    """The tiny student with the prompt's tags removed from its tokenizer (a real checkpoint's
    situation: SmolVLM-256M-Instruct ships without them)."""
    import shutil

    shutil.copytree(src, dst)
    path = dst / "tokenizer.json"
    data = json.loads(path.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in prompt.SPECIAL_TOKENS]
    path.write_text(json.dumps(data))
    config = dst / "tokenizer_config.json"
    cfg = json.loads(config.read_text())
    for key in ("added_tokens_decoder",):
        cfg[key] = {k: v for k, v in cfg.get(key, {}).items()
                    if v["content"] not in prompt.SPECIAL_TOKENS}
    config.write_text(json.dumps(cfg))
    return dst


def test_load_student_adds_missing_tags(tmp_path):
    tagless = _tagless_copy(init_tiny(tmp_path / "tiny"), tmp_path / "tagless")
    from transformers import AutoTokenizer
    assert missing_tags(AutoTokenizer.from_pretrained(tagless)) == list(prompt.SPECIAL_TOKENS)
    student = load_student(tagless)
    tok = student.processor.tokenizer
    assert missing_tags(tok) == []
    assert student.model.get_input_embeddings().weight.shape[0] >= len(tok)
    text = prompt.reasoning_target("why", ["kp"])
    assert [tok.convert_ids_to_tokens(i) for i in tok(text, add_special_tokens=False)["input_ids"]
            ][0] == prompt.THINK_OPEN


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_the_tag_rows_and_merge_keeps_them(tmp_path, tie):
    text = save_text_model(tmp_path / "llama", tie=tie)
    student = load_student(compose(str(text), tmp_path / "s", vision="tiny-8-32"))
    tok = student.processor.tokenizer
    rows = trainable_token_ids(tok, student.family.image_wrapper_tokens)
    assert set(rows) >= {tag_id(tok, t) for t in prompt.SPECIAL_TOKENS} | {tok.eos_token_id}
    assert set(rows) >= {tok.convert_tokens_to_ids(t) for t in student.family.image_wrapper_tokens}
    emb0 = student.model.get_input_embeddings().weight.detach().clone()
    head0 = student.model.get_output_embeddings().weight.detach().clone()
    model = apply_lora(student.model, student.family, LoraSettings(r=4, alpha=8, dropout=0.0), tok)
    batch = train_batch(student.processor, POSTS, [prompt.direct_target(p.keyphrases) for p in POSTS])
    train_steps(model, batch, steps=3)
    with torch.no_grad():
        peft_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    save_adapter(model, student.processor, tmp_path / "run" / "adapter")
    merged = model.merge_and_unload()
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    def moved(now, before):
        return sorted(torch.nonzero((now - before).abs().sum(1) > 0).flatten().tolist())

    # the head's rows all get a gradient (softmax over the vocabulary): exactly the contract's rows
    # move; an untied input embedding moves only those rows the batch reads (<answer>, </answer>)
    assert moved(head, head0) == rows
    read = {tag_id(tok, prompt.ANSWER_OPEN), tag_id(tok, prompt.ANSWER_CLOSE)}
    assert read <= set(moved(emb, emb0)) <= set(rows)
    # the run dir's adapter, loaded on its base, gives the same model as the one trained
    reloaded = load_student(tmp_path / "run")
    with torch.no_grad():
        again = reloaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    scale = float(peft_logits.abs().max())
    assert float((again - peft_logits).abs().max()) <= 1e-5 * scale


def test_init_student_cli_refuses_a_missing_gguf(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["init-student", str(tmp_path / "s"), "--text", str(tmp_path / "none.gguf")])
    assert exc.value.code == 2
    assert not (tmp_path / "s").exists()


def _exact_rows(folder):
    """A tagless composed checkpoint whose embedding has exactly one row per token (no spare rows
    for the tags to land in: loading must grow it)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(folder)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(folder)), mean_resizing=False)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("base", ["tiny", "composed"])
def test_an_adapter_trained_on_a_tagless_checkpoint_reloads_identically(tmp_path, text_dir, base):
    """Base without tags → tags added at load → LoRA + tag rows trained → adapter saved; loading
    the run dir re-adds the tags to the base the same way and gives the same model."""
    if base == "tiny":
        tagless = _tagless_copy(init_tiny(tmp_path / "tiny"), tmp_path / "tagless")
    else:
        src = compose(str(text_dir), tmp_path / "composed", vision="tiny-8-32")
        tagless = _exact_rows(_tagless_copy(src, tmp_path / "tagless"))
    student = load_student(tagless)
    tok = student.processor.tokenizer
    model = apply_lora(student.model, student.family, LoraSettings(r=4, alpha=8, dropout=0.0), tok)
    batch = train_batch(student.processor, POSTS, [prompt.direct_target(p.keyphrases) for p in POSTS])
    train_steps(model, batch, steps=3)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = model(**inputs).logits
    save_adapter(model, student.processor, tmp_path / "run" / "adapter")
    again = load_student(tmp_path / "run")
    assert missing_tags(again.processor.tokenizer) == []
    with torch.no_grad():
        got = again.model(**inputs).logits
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
