"""Near-duplicate detection: known pairs are found, distinct posts are not, Jaccard is exact, and
the LSH candidate step loses (almost) nothing above the threshold."""

import random

import numpy as np
import pytest

from mmkp_edge.data.neardup import (NearDupConfig, Shingles, near_duplicate_pairs, normalise_text)
from mmkp_edge.errors import InputError


def _eligible(texts, cfg):
    return np.array([len(t) >= cfg.min_chars for t in texts])


def test_normalise_text():
    assert normalise_text("  Héllo,   WORLD!! <user> ﬁne_tune ") == "héllo world user fine tune"
    assert normalise_text("!!! ...") == ""


def test_jaccard_is_exact_on_ngram_sets():
    sh = Shingles(["abcdef", "abcdxx", "ab"], 3, progress=False)
    # abcdef → abc bcd cde def; abcdxx → abc bcd cdx dxx: 2 shared of 6
    assert sh.jaccard(0, 1) == pytest.approx(2 / 6)
    assert sh.jaccard(0, 0) == 1.0
    assert len(sh.set(2)) == 1                       # shorter than n: one padded n-gram


def test_crafted_pairs_found_and_distinct_posts_not():
    cfg = NearDupConfig()
    texts = [normalise_text(t) for t in [
        "the quick brown fox jumps over the lazy dog near the river bank",      # 0
        "the quick brown fox jumps over the lazy dog near the river banks",     # 1 ~ 0
        "completely unrelated sentence about quarterly financial reports",       # 2
        "maga2kag follow all and retweet dm 4 ride943 patriots unite",          # 3
        "maga2kag follow all and retweet dm 4 ride944 patriots unite",          # 4 ~ 3 (J 0.83)
        "a short one",                                                           # 5 (too short)
        "a short two",                                                           # 6 (too short)
        "the slow green turtle walks under the busy bridge at noon today",      # 7
    ]]
    pairs = near_duplicate_pairs(texts, _eligible(texts, cfg), cfg, progress=False)
    assert {(i, j) for i, j, _ in pairs} == {(0, 1), (3, 4)}
    assert all(cfg.threshold <= jac < 1 for _, _, jac in pairs)


def test_recall_on_edited_copies_and_no_false_positives():
    """One-word edits of 30-word posts are ~0.85 Jaccard: LSH must surface (nearly) all of them."""
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(3000)]
    base = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(400)]
    edited = []
    for t in base[:200]:
        toks = t.split()
        toks[rng.randrange(len(toks))] = rng.choice(words)
        edited.append(" ".join(toks))
    texts = base + edited
    cfg = NearDupConfig()
    sh = Shingles(texts, cfg.ngram, progress=False)
    truth = {(i, 400 + i) for i in range(200) if sh.jaccard(i, 400 + i) >= cfg.threshold}
    found = {(i, j) for i, j, _ in near_duplicate_pairs(texts, _eligible(texts, cfg), cfg, progress=False)}
    assert found <= truth | {(i, j) for i, j in found if sh.jaccard(i, j) >= cfg.threshold}
    assert len(found & truth) >= 0.97 * len(truth) and len(truth) > 150
    assert all(j - i == 400 for i, j in found)            # unrelated random posts never pair up


def test_big_bucket_is_bounded_but_connected():
    """200 copies of one template: pairs are bounded (not 200²/2) and every copy links to the first."""
    texts = [f"buy now limited offer on shiny shoes and bags number {i:03d}" for i in range(200)]
    cfg = NearDupConfig()
    pairs = near_duplicate_pairs(texts, _eligible(texts, cfg), cfg, progress=False)
    assert len(pairs) < 200 * (cfg.neighbours + 1) * 2
    linked_to_first = {j for i, j, _ in pairs if i == 0}
    assert len(linked_to_first) > 150


def test_deterministic():
    texts = [f"some repeated text with a small change number {i % 7} and more words" for i in range(50)]
    cfg = NearDupConfig(seed=3)
    a = near_duplicate_pairs(texts, _eligible(texts, cfg), cfg, progress=False)
    b = near_duplicate_pairs(texts, _eligible(texts, cfg), cfg, progress=False)
    assert a == b and a


@pytest.mark.parametrize("kwargs", [dict(threshold=0), dict(threshold=1.5), dict(num_perm=100, bands=30),
                                    dict(min_chars=2), dict(ngram=0)])
def test_bad_config(kwargs):
    with pytest.raises(InputError):
        NearDupConfig(**kwargs).validate()
