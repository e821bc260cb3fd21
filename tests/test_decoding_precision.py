"""The decoding rules every generator shares, and what train.precision means on a CPU."""

import pytest
import torch

from mmkp_edge import prompt
from mmkp_edge.decoding import DecodingRules
from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post
from train import precision
from train.generation import generate_batch
from train.student import load_student
from train.tiny import init_tiny
from train.tokens import decoding_rules, tag_id

IDS = dict(eos_ids=[7, None, 7, 9], think_open=3, think_close=4, answer_close=6)


def test_rules_per_think_mode():
    off, on, auto = (DecodingRules.build(m, **IDS) for m in ("off", "on", "auto"))
    assert (off.prime, on.prime, auto.prime) == (prompt.ANSWER_OPEN, prompt.THINK_OPEN, "")
    assert off.stop_ids == on.stop_ids == (6, 7, 9)
    assert off.suppress_ids == (3, 4) and on.suppress_ids == auto.suppress_ids == ()


def test_cut_keeps_the_first_stop_and_drops_the_rest():
    rules = DecodingRules.build("auto", **IDS)
    assert rules.cut([1, 2, 6, 5, 7]) == [1, 2, 6]
    assert rules.cut([1, 2, 3]) == [1, 2, 3]
    assert rules.finish([1, 2, 6]) == "stop" and rules.finish([1, 2, 3]) == "length"
    assert rules.finish([]) == "length"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return load_student(init_tiny(tmp_path_factory.mktemp("tiny") / "s"))


def test_torch_generation_follows_the_rules(student):
    """think=off never emits a reasoning tag; every output ends at its first stop or its budget."""
    tok = student.processor.tokenizer
    posts = [Post(str(i), t) for i, t in enumerate(["storm tonight", "happy birthday", "cat", "game"])]
    for think in ("off", "auto", "on"):
        rules = decoding_rules(student.model, tok, think)
        for g in generate_batch(student.model, student.processor, posts, think, max_new_tokens=12):
            assert g.text.startswith(rules.prime)
            assert g.token_ids == tuple(rules.cut(g.token_ids))
            assert len(g.token_ids) == 12 or g.token_ids[-1] in rules.stop_ids
            if think == "off":
                assert not {tag_id(tok, prompt.THINK_OPEN), tag_id(tok, prompt.THINK_CLOSE)} & set(
                    g.token_ids)


def test_precision_auto_and_fp32_mean_no_autocast_on_cpu():
    assert precision.autocast_dtype("auto", "cpu") is None
    assert precision.autocast_dtype("fp32", "cpu") is None
    assert precision.autocast_dtype("auto", "cuda") is torch.bfloat16
    with pytest.raises(InputError):
        precision.autocast_dtype("fp16", "cpu")


def test_cpu_bf16_is_refused_where_the_cpu_lacks_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(InputError, match="no native bf16"):
        precision.autocast_dtype("bf16", "cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.autocast_dtype("bf16", "cpu") is torch.bfloat16


@pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_autocast_really_lowers_the_matmuls(student):
    lm = student.family.language_model(student.model)
    x = torch.randn(2, 5, lm.config.hidden_size)
    with precision.autocast("cpu", precision.autocast_dtype("bf16", "cpu")):
        y = lm.layers[0].mlp(x)
    assert y.dtype == torch.bfloat16
