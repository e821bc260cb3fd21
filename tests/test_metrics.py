"""The scorer equals CMKP's evaluator (golden values) and its extra views are right by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmkp_edge import metrics
from mmkp_edge.metrics import clean_predictions, cmkp_source, format_table, is_present, score
from mmkp_edge.posts import read_cmkp, read_lines, split_keyphrases

# Toy from DESIGN.md: `a b c d<sep>a b;c` · `x z<sep>x;y` · `foo<sep>cats`.
TOY_TARGETS = [["a b", "c"], ["x", "y"], ["cats"]]
TOY_PREDS = [["a b", "d", "c", "a b"], ["x"], []]
TOY_SOURCES = ["a b c d", "x z", "foo"]


def r5(x: float) -> float:
    return round(x, 5)


# ---------------------------------------------------------------- CMKP-exact: toy goldens

def test_toy_golden_values():
    res = score(TOY_TARGETS, TOY_PREDS)
    assert r5(res["all"]["f1@1"]) == 0.44444
    assert r5(res["all"]["f1@3"]) == 0.52632
    assert r5(res["all"]["map@5"]) == 0.44444
    assert res["all"]["n_posts"] == 3


def test_toy_golden_with_stemmed_match_on_last_post():
    preds = TOY_PREDS[:2] + [["cat", "dog"]]   # "cat" matches target "cats" after stemming
    assert r5(score(TOY_TARGETS, preds)["all"]["f1@1"]) == 0.80000


def test_toy_strict_f1_by_hand():
    # Cleaned predictions: post 1 [a b, d, c] (duplicate "a b" dropped) hits [1, 0, 1], T=2;
    # post 2 [x] hits [1], T=2; post 3 none (T=1).
    # strict P@1 = (1 + 1 + 0)/3 = 2/3,      R@1 = (1/2 + 1/2 + 0)/3 = 1/3 -> F1 = 4/9
    # strict P@3 = (2/3 + 1/3 + 0)/3 = 1/3,  R@3 = (1 + 1/2 + 0)/3 = 1/2   -> F1 = 2/5
    # strict P@5 = (2/5 + 1/5 + 0)/3 = 1/5,  R@5 = 1/2                     -> F1 = 2/7
    # (CMKP's P@3 divides by min(3, n): (2/3 + 1 + 0)/3 = 5/9 -> F1@3 10/19 = 0.52632.)
    strict = score(TOY_TARGETS, TOY_PREDS)["strict"]
    assert r5(strict["f1@1"]) == r5(4 / 9)
    assert r5(strict["f1@3"]) == 0.40000
    assert r5(strict["f1@5"]) == r5(2 / 7)
    assert strict["map@5"] == score(TOY_TARGETS, TOY_PREDS)["all"]["map@5"]


def test_toy_present_absent_by_hand():
    # Present targets: post 1 {a b, c}, post 2 {x}; absent: post 2 {y}, post 3 {cat}.
    # Present preds: post 1 [a b, d, c] (all occur in "a b c d"), post 2 [x].
    # P@1 = (1 + 1)/2, R@1 = (1/2 + 1)/2 = 3/4 -> F1@1 = 6/7
    res = score(TOY_TARGETS, TOY_PREDS, TOY_SOURCES)
    assert res["present"]["n_posts"] == 2
    assert r5(res["present"]["f1@1"]) == r5(6 / 7)
    assert res["absent"]["n_posts"] == 2
    assert res["absent"]["f1@1"] == 0.0 and res["absent"]["map@5"] == 0.0


def test_toy_seen_unseen_by_hand():
    # Training labels {a b, x, cat}: "cats" is seen (stems to cat), "c" and "y" are unseen.
    # seen:   post 1 T=[a b] P=[a b]; post 2 T=[x] P=[x]; post 3 T=[cat] P=[] -> P@k=R@k=2/3
    # unseen: post 1 T=[c] P=[d, c]; post 2 T=[y] P=[]                   (post 3 has none)
    #   P@1 = 0; P@3 = (1/2 + 0)/2 = 1/4, R@3 = (1 + 0)/2 = 1/2 -> F1@3 = 1/3
    #   AP@5 = ((1/2)/1 + 0)/2 = 1/4
    res = score(TOY_TARGETS, TOY_PREDS, train_keyphrases=["a b", "x", "cat"])
    assert res["seen"]["n_posts"] == 3
    assert r5(res["seen"]["f1@1"]) == r5(2 / 3)
    assert r5(res["seen"]["map@5"]) == r5(2 / 3)
    assert res["unseen"]["n_posts"] == 2
    assert res["unseen"]["f1@1"] == 0.0
    assert r5(res["unseen"]["f1@3"]) == r5(1 / 3)
    assert r5(res["unseen"]["map@5"]) == 0.25


def test_optional_subsets_only_when_asked():
    res = score(TOY_TARGETS, TOY_PREDS)
    assert set(res) == {"all", "strict", "preds_per_post"}
    res = score(TOY_TARGETS, TOY_PREDS, TOY_SOURCES, ["a b"])
    assert set(res) == {"all", "strict", "present", "absent", "seen", "unseen", "preds_per_post"}
    for name in ("all", "strict", "present", "absent", "seen", "unseen"):
        assert {"f1@1", "f1@3", "f1@5", "map@5", "n_posts"} <= set(res[name])


# ---------------------------------------------------------------- filtering and edge cases

def test_invalid_and_duplicate_predictions_dropped_before_cut():
    preds = ["<unk> dog", "cats", "cat", ", ", "Cats ", ".", "dog"]
    assert clean_predictions(preds) == [("cat",), ("dog",)]
    res = score([["dog"]], [preds])
    # After filtering "dog" is 2nd of n=2: P@1 = 0, P@3 = 1/min(3, 2), R@3 = 1.
    assert res["all"]["f1@1"] == 0.0
    assert r5(res["all"]["p@3"]) == 0.5
    assert r5(res["all"]["f1@3"]) == r5(2 / 3)
    assert r5(res["all"]["map@5"]) == 0.5
    assert res["preds_per_post"] == 2


def test_duplicate_targets_counted_once():
    res = score([["cats", "cat", "dog"]], [["cat"]])
    assert res["all"]["r@1"] == 0.5     # T = 2 unique stemmed targets, not 3


def test_empty_prediction_is_one_non_match():
    res = score([["a"], ["b"]], [["a"], []])
    assert res["all"]["p@1"] == 0.5 and res["all"]["r@1"] == 0.5   # the empty post scores 0
    assert res["all"]["n_posts"] == 2
    assert res["preds_per_post"] == 0.5
    only_empty = score([["a"]], [[]])
    assert all(only_empty["all"][key] == 0.0 for key in ("f1@1", "f1@3", "f1@5", "map@5"))


def test_presence_is_contiguous_on_stems():
    src = metrics.source_stems("the Cats  were running fast")
    assert is_present(("cat", "were"), src)
    assert is_present(("run",), src)
    assert not is_present(("cat", "run"), src)
    assert not is_present((), src)


def test_cmkp_source_appends_non_empty_ocr():
    assert cmkp_source("post text", "") == "post text"
    assert cmkp_source("post text", "  ") == "post text"
    assert cmkp_source("post text", "big sale") == "post text big sale"


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError):
        score([["a"]], [["a"], ["b"]])
    with pytest.raises(ValueError):
        score([["a"]], [["a"]], sources=[])


def test_empty_subset_is_all_zero():
    res = score([["a"]], [["a"]], train_keyphrases=["a"])
    assert res["unseen"]["n_posts"] == 0 and res["unseen"]["f1@1"] == 0.0


def test_format_table():
    table = format_table(score(TOY_TARGETS, TOY_PREDS, TOY_SOURCES))
    lines = table.splitlines()
    assert lines[0].split() == ["subset", "F1@1", "F1@3", "F1@5", "MAP@5", "posts"]
    assert [line.split()[0] for line in lines[1:5]] == ["all", "strict", "present", "absent"]
    assert lines[1].split()[1:] == ["44.44", "52.63", "52.63", "44.44", "3"]
    assert len({len(line) for line in lines[:5]}) == 1        # aligned
    assert lines[-1] == "predictions per post: 1.33"


phrase = st.lists(st.sampled_from(["a", "b", "cats", "cat", "<unk>", ","]), min_size=0, max_size=3)
post = st.lists(phrase.map(" ".join), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(post, post), min_size=1, max_size=5))
def test_scores_are_fractions_and_strict_is_lower(pairs):
    targets, preds = zip(*pairs)
    res = score(list(targets), list(preds), sources=["a b cats"] * len(pairs))
    for name in ("all", "strict", "present", "absent"):
        for key, value in res[name].items():
            if key != "n_posts":
                assert 0.0 <= value <= 1.0 + 1e-12, (name, key, value)
    for k in (1, 3, 5):
        assert res["strict"][f"f1@{k}"] <= res["all"][f"f1@{k}"] + 1e-12


# ---------------------------------------------------------------- CMKP-exact: released predictions

@pytest.fixture(scope="module")
def cmkp_test(cmkp_dir):
    posts = read_cmkp(cmkp_dir / "test_src.txt", ocr=cmkp_dir / "test_ocr_final.txt")
    preds = [split_keyphrases(line) for line in read_lines(cmkp_dir / "cmkp_best_pred.txt")]
    return posts, preds


def test_cmkp_released_predictions_match_published_scores(cmkp_test):
    posts, preds = cmkp_test
    res = score([p.keyphrases for p in posts], preds,
                sources=[cmkp_source(p.text, p.ocr) for p in posts])
    assert res["all"]["n_posts"] == 5372
    assert (r5(res["all"]["f1@1"]), r5(res["all"]["f1@3"]), r5(res["all"]["map@5"])) == \
        (0.47130, 0.33224, 0.52261)
    assert (r5(res["present"]["f1@1"]), r5(res["present"]["f1@3"])) == (0.82502, 0.79918)
    assert (r5(res["absent"]["f1@1"]), r5(res["absent"]["f1@3"])) == (0.28103, 0.22401)
