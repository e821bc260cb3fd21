"""The prompt/target contract and the parser: what training writes, the parser reads back."""

import string

import pytest
from hypothesis import given, strategies as st

from mmkp_edge import prompt
from mmkp_edge.parser import parse
from mmkp_edge.phrases import stem_key

# Normalised keyphrases: lowercase words (letters/digits), single spaces, unique by stem.
word = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)
phrase = st.lists(word, min_size=1, max_size=3).map(" ".join)


def stem_unique(phrases):
    seen, out = set(), []
    for p in phrases:
        if stem_key(p) not in seen:
            seen.add(stem_key(p))
            out.append(p)
    return out


keyphrase_lists = st.lists(phrase, min_size=1, max_size=6).map(stem_unique)
rationales = st.text(alphabet=string.ascii_letters + " .;,'#", max_size=80)


@given(keyphrase_lists)
def test_direct_target_round_trips(kps):
    out = parse(prompt.direct_target(kps))
    assert out.keyphrases == kps and not out.thought and out.rationale is None


@given(rationales, keyphrase_lists)
def test_reasoning_target_round_trips(why, kps):
    out = parse(prompt.reasoning_target(why, kps))
    assert out.keyphrases == kps
    assert out.thought and out.rationale == " ".join(why.split())


def test_targets_have_the_documented_form():
    assert prompt.direct_target(["storm hour", "rain"]) == "<answer>storm hour; rain</answer>"
    assert (prompt.reasoning_target("wet sky", ["rain"])
            == "<think>wet sky</think><answer>rain</answer>")


def test_separators_inside_a_phrase_cannot_split_it():
    assert parse(prompt.direct_target(["a;b", "c,d"])).keyphrases == ["a b", "c d"]


def test_think_modes_prime_the_decoder():
    assert prompt.prime("off") == "<answer>"
    assert prompt.prime("on") == "<think>"
    assert prompt.prime("auto") == ""
    with pytest.raises(ValueError, match="think mode"):
        prompt.prime("maybe")


def test_messages_put_the_image_first_and_only_when_present():
    with_image = prompt.messages("hello", has_image=True)[0]["content"]
    assert [c["type"] for c in with_image] == ["image", "text"]
    assert [c["type"] for c in prompt.messages("hello")[0]["content"]] == ["text"]
    assert "Post: hello" in with_image[1]["text"]
    assert "Text in the image: stop" in prompt.user_text("hello", ocr=" stop ")


def test_prompt_hash_covers_the_contract(monkeypatch):
    assert prompt.contract_hash() == prompt.PROMPT_HASH
    monkeypatch.setattr(prompt, "INSTRUCTION", prompt.INSTRUCTION + " Be brief.")
    assert prompt.contract_hash() != prompt.PROMPT_HASH              # a changed instruction is a new prompt
    monkeypatch.undo()
    monkeypatch.setattr(prompt, "KEYPHRASE_SEP", ", ")
    assert prompt.contract_hash() != prompt.PROMPT_HASH              # so is a changed target format


@pytest.mark.parametrize("text, expected", [
    ("<answer>#StormHour; rain, Rain</answer>", ["storm hour", "rain"]),
    ("#NYCMarathon2024 #iPhone", ["nyc marathon 2024", "i phone"]),
    ("WorldCup;covid19;kp1", ["world cup", "covid19", "kp1"]),
    ("dogs; dog; Dog ; #dog", ["dogs"]),                       # stem-level de-duplication
    ("<answer>a; b", ["a", "b"]),                              # unclosed answer
    ("<think>it is x</think> x; y", ["x", "y"]),               # answer after </think>, no tag
    ("<think>only thinking", []),                              # never answered
    ("", []),
])
def test_parser_cases(text, expected):
    assert parse(text).keyphrases == expected


def test_parser_reports_thinking():
    out = parse("<think>the image shows a dog</think><answer>beagle</answer>")
    assert out.thought and out.rationale == "the image shows a dog" and out.keyphrases == ["beagle"]
    assert not parse("<answer>beagle</answer>").thought
