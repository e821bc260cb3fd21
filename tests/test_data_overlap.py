"""Overlap report: every statistic on a hand-made train/test pair, and CMKP valid-vs-test numbers
recomputed independently."""

import json

import pytest

from mmkp_edge.cli.data import main
from mmkp_edge.data.neardup import NearDupConfig
from mmkp_edge.data.overlap import keyphrase_overlap, overlap_report, post_keys
from mmkp_edge.phrases import stem_key
from mmkp_edge.posts import Post, read_cmkp, write_jsonl

TRAIN = [
    Post(id="a", text="The cat sat on the mat all afternoon in the warm sun", keyphrases=("cats", "pets")),
    Post(id="b", text="walking the dog along the river before the storm arrived", keyphrases=("dog",)),
    Post(id="c", text="quarterly earnings beat every analyst estimate this year", keyphrases=("stocks",)),
]
TEST = [
    # 2 instances, 1 seen ("cat" stems like "cats"); not all seen
    Post(id="t1", text="a completely new post about kittens and yarn balls", keyphrases=("cat", "sunny day")),
    # exact duplicate of a (case and punctuation differ); its keyphrase is seen
    Post(id="t2", text="the cat sat on the MAT, all afternoon in the warm sun!!", keyphrases=("pets",)),
    # near duplicate of b (one word changed); keyphrase "dogs" seen
    Post(id="t3", text="walking the dog along the river before the storm arrives", keyphrases=("dogs",)),
    # unseen keyphrase, unrelated text
    Post(id="t4", text="birds migrating south over the mountains in october", keyphrases=("birds",)),
    # duplicate keyphrases by stem count once; no keyphrase-less post counts in posts_all_seen
    Post(id="t5", text="more stock market talk from the morning show hosts", keyphrases=("stocks", "stock")),
    Post(id="t6", text="no labels on this one at all but long enough text", keyphrases=()),
]


def test_post_keys_dedupes_by_stem_in_order():
    assert post_keys(Post(id="x", keyphrases=("Stocks", "stock", "cats", " "))) == ("stock", "cat")


def test_keyphrase_statistics_exact():
    r = keyphrase_overlap(TRAIN, TEST, top=10)
    # instances: t1 2 (1 seen), t2 1 (1), t3 1 (1), t4 1 (0), t5 1 (1) → 6 instances, 4 seen
    assert (r["test_keyphrase_instances"], r["seen_keyphrase_instances"]) == (6, 4)
    assert r["seen_instance_ratio"] == pytest.approx(4 / 6)
    # distinct: cat, sunny day, pet, dog, bird, stock → 6; seen: cat, pet, dog, stock → 4
    assert r["seen_distinct_ratio"] == pytest.approx(4 / 6)
    # labelled posts 5; all seen: t2, t3, t5
    assert r["posts_all_seen_ratio"] == pytest.approx(3 / 5)
    top = r["top_overlapping_keyphrases"]
    assert {t["stem"] for t in top} == {"cat", "pet", "dog", "stock"}
    assert all(t["test_count"] == 1 and t["train_count"] == 1 for t in top)
    assert [t["stem"] for t in top] == sorted(t["stem"] for t in top)      # ties broken by stem


def test_duplicate_statistics_exact():
    r = overlap_report(TRAIN, TEST, NearDupConfig(), progress=False)
    assert r["exact_duplicate_posts"] == 1 and r["exact_duplicate_examples"][0]["test_id"] == "t2"
    assert r["near_duplicate_posts"] == 1
    ex = r["near_duplicate_examples"][0]
    assert (ex["test_id"], ex["train_id"]) == ("t3", "b") and 0.8 <= ex["jaccard"] < 1
    assert r["exact_duplicate_ratio"] == pytest.approx(1 / 6)
    assert r["exact_duplicates_same_keyphrases"] == 0          # t2 has only "pets", a has 2
    assert r["near_duplicates_same_keyphrases"] == 1           # dogs == dog after stemming
    assert r["method"]["config_threshold"] == 0.8 and "Porter" in r["method"]["keyphrase_identity"]


def test_raising_the_threshold_drops_the_near_pair():
    r = overlap_report(TRAIN, TEST, NearDupConfig(threshold=0.99), progress=False)
    assert r["near_duplicate_posts"] == 0 and r["exact_duplicate_posts"] == 1


def test_cli_json_has_the_promised_keys(tmp_path, capsys):
    write_jsonl(TRAIN, tmp_path / "train.jsonl")
    write_jsonl(TEST, tmp_path / "test.jsonl")
    assert main(["overlap", "--train", str(tmp_path / "train.jsonl"), "--test",
                 str(tmp_path / "test.jsonl"), "--json", "--quiet", "-o", str(tmp_path / "r.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("seen_instance_ratio", "seen_distinct_ratio", "posts_all_seen_ratio",
                "exact_duplicate_posts", "near_duplicate_posts", "top_overlapping_keyphrases", "method"):
        assert key in out
    assert json.loads((tmp_path / "r.json").read_text())["seen_instance_ratio"] == out["seen_instance_ratio"]


def test_cmkp_valid_vs_test(cmkp_dir, capsys):
    assert main(["overlap", "--train", str(cmkp_dir / "valid_src.txt"), "--test",
                 str(cmkp_dir / "test_src.txt"), "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    train, test = read_cmkp(cmkp_dir / "valid_src.txt"), read_cmkp(cmkp_dir / "test_src.txt")
    # Recompute the keyphrase numbers with a plain loop over stem_key.
    labels = {stem_key(k) for p in train for k in p.keyphrases}
    inst = [[key in labels for key in dict.fromkeys(stem_key(k) for k in p.keyphrases)]
            for p in test]
    assert r["test_keyphrase_instances"] == sum(map(len, inst))
    assert r["seen_instance_ratio"] == pytest.approx(sum(map(sum, inst)) / sum(map(len, inst)))
    assert r["posts_all_seen_ratio"] == pytest.approx(sum(all(x) for x in inst) / len(test))
    assert r["train_posts"] == 5370 and r["test_posts"] == 5372
    # valid is a sample of the same stream as test, so most labels recur, but fewer than vs full train
    assert 0.5 < r["seen_instance_ratio"] < 0.989
    assert r["seen_distinct_ratio"] < r["seen_instance_ratio"]     # frequent labels are the seen ones
    assert r["exact_duplicate_posts"] + r["near_duplicate_posts"] < 0.05 * r["test_posts"]
    assert r["top_overlapping_keyphrases"][0]["test_count"] >= r["top_overlapping_keyphrases"][-1]["test_count"]
