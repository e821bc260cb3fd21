"""Long posts are tagged, not refused: the one cutting rule (mmkp_edge.truncation) and the runtime
using it — the result always fits, keeps the beginning, cuts the OCR before the post text, is the
same for every think mode, and is flagged; a prompt that cannot fit even without its text is still
a one-line item error. (Training's side: tests/test_train_student_collate.py; runtime and training
cutting a post identically: tests/test_export_bundle.py.)"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import Query
from mmkp_edge.truncation import Fitted, fit, prompt_limit
from tiny_onnx import build_bundle, build_tokenizer

TOKENIZER = build_tokenizer()


def bpe_count(text: str, ocr: str) -> int:
    """A real byte-level BPE count (not monotone in the text's length) plus a fixed 'chat' cost."""
    return 7 + len(TOKENIZER.encode(f"Post: {text}\nText in the image: {ocr}").ids)


def word_count(text: str, ocr: str) -> int:
    return 3 + len(text.split()) + len(ocr.split())


# ---------------------------------------------------------------- the rule

def test_a_post_that_fits_is_left_alone():
    for limit in (7, 99):                                    # 3 + 3 words + 1 word = 7 tokens
        assert fit("a storm tonight", "SALE", word_count, limit) == \
            Fitted("a storm tonight", "SALE", False, 7)


def test_the_ocr_is_cut_before_the_post_text_and_beginnings_are_kept():
    text, ocr = "one two three four", "alpha beta gamma delta epsilon"
    got = fit(text, ocr, word_count, 3 + 4 + 2)              # room for the text and 2 OCR words
    assert (got.text, got.ocr, got.truncated, got.tokens) == (text, "alpha beta", True, 9)
    got = fit(text, ocr, word_count, 3 + 2)                  # not even the whole text fits
    assert (got.text, got.ocr, got.truncated, got.tokens) == ("one two", "", True, 5)


def test_the_cut_keeps_whole_words_unless_one_word_is_all_there_is():
    chars = lambda text, ocr: len(text) + len(ocr)          # noqa: E731
    assert fit("storm over the city", "", chars, 12).text == "storm over"    # not "storm over t"
    assert fit("x" * 100, "", chars, 40).text == "x" * 40                   # no word boundary
    assert fit("x" * 100, "", chars, 40).tokens == 40


def test_a_bare_prompt_over_the_limit_comes_back_empty_and_says_so():
    got = fit("some text", "ocr words", word_count, 2)
    assert (got.text, got.ocr, got.truncated) == ("", "", True) and got.tokens == 3 > 2


def test_prompt_limit_is_the_context_minus_the_generation_budget():
    assert prompt_limit(2048, 96) == 1952 and prompt_limit(512, 8) == 504


_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, ocr=_TEXT, limit=st.integers(0, 140))
def test_property_the_result_always_fits_and_is_a_prefix(text, ocr, limit):
    got = fit(text, ocr, bpe_count, limit)
    assert got.tokens == bpe_count(got.text, got.ocr)
    if bpe_count("", "") <= limit:
        assert got.tokens <= limit
    assert text.startswith(got.text) and ocr.startswith(got.ocr)
    assert got.truncated == ((got.text, got.ocr) != (text, ocr))
    if got.ocr:
        assert got.text == text                              # the post text is never cut first


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.sampled_from(["a", "bb", "storm", "city", "x" * 9]), max_size=60),
       limit=st.integers(3, 40))
def test_property_with_a_monotone_count_the_kept_beginning_is_maximal(words, limit):
    text = " ".join(words)
    got = fit(text, "", word_count, limit)
    kept = len(got.text.split())
    assert got.text == " ".join(words[:kept])                 # whole words, from the start
    assert kept == min(len(words), limit - 3)                 # and as many as fit


# ---------------------------------------------------------------- the runtime

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), stop_bias=9.0, max_context=512)


@pytest.fixture(scope="module")
def predictor(bundle):
    return KeyphrasePredictor.from_bundle(bundle)


def _prompt_tokens(predictor, query, max_new_tokens) -> int:
    """Prompt ids before the think prime (think auto has none)."""
    return len(predictor.request(query, "auto", max_new_tokens).input_ids)


@pytest.mark.parametrize("text", ["storm " * 20_000, "x" * 100_000, "é🙂 " * 30_000],
                         ids=["20000-words", "100k-chars", "multibyte"])
def test_a_long_post_is_answered_from_its_beginning_and_flagged(predictor, text):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    short, long, with_image = (Query("beach sunset", id="short"), Query(text, id="long"),
                               Query(text, image, id="img"))
    preds = predictor.predict([short, long, with_image], think="off", max_new_tokens=8)
    assert [p.error for p in preds] == [None, None, None]
    assert [p.truncated for p in preds] == [False, True, True]
    assert all(p.generated_tokens > 0 for p in preds)
    assert json.loads(json.dumps(preds[1].to_json()))["truncated"] is True
    limit = prompt_limit(predictor.manifest.model.max_context, 8)
    for query in (long, with_image):
        used = _prompt_tokens(predictor, query, 8)
        assert limit - 16 < used <= limit                     # filled up to the limit, not past it
    decoded = predictor.bundle.encoder.tokenizer.decode(predictor.request(long, "auto", 8)
                                                        .input_ids.tolist())
    kept = decoded.split("Post: ", 1)[1].rsplit("\nAssistant:", 1)[0]
    assert len(kept) > 100 and text.startswith(kept)           # the beginning, as text


def test_every_think_mode_sees_the_same_cut(predictor):
    query = Query("storm over the city " * 3000, ocr="SALE " * 1000)
    prime = {t: predictor.bundle.encoder.tokenizer.encode(p, add_special_tokens=False).ids
             for t, p in (("off", "<answer>"), ("on", "<think>"), ("auto", ""))}
    auto = predictor.request(query, think="auto").input_ids.tolist()
    for think in ("off", "on"):
        assert predictor.request(query, think=think).input_ids.tolist() == auto + prime[think]


def test_a_long_ocr_is_cut_before_the_post_text(predictor):
    text = "a storm over the city tonight"
    query = Query(text, ocr="SALE " * 5000)
    pred = predictor.predict([query], max_new_tokens=8)[0]
    assert pred.error is None and pred.truncated
    decoded = predictor.bundle.encoder.tokenizer.decode(predictor.request(query).input_ids.tolist())
    assert text in decoded and "SALE SALE" in decoded          # the whole text, then OCR's start


def test_a_prompt_that_cannot_fit_even_without_text_is_a_one_line_item_error(tmp_path):
    tiny = KeyphrasePredictor.from_bundle(build_bundle(tmp_path / "b", max_context=24))
    preds = tiny.predict([Query("x " * 1000, id="long"), Query("", id="empty")])
    for p in preds:
        assert p.error and "without its text" in p.error and "\n" not in p.error
        assert "24" in p.error
