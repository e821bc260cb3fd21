"""De-duplication: first copy wins in priority order, every removal is listed with its reason, the
result is deterministic, and a set left empty is an error."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmkp_edge.cli.data import main
from mmkp_edge.data.dedup import deduplicate
from mmkp_edge.data.neardup import NearDupConfig, Shingles, normalise_text
from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post, read_jsonl, write_jsonl

FOX = "the quick brown fox jumps over the lazy dog near the river bank"
TEST = [Post(id="t1", text=FOX, keyphrases=("fox",)),
        Post(id="t2", text="an entirely different post about mountain biking trails", keyphrases=("bike",))]
TRAIN = [Post(id="r1", text=FOX.upper() + " !!", keyphrases=("fox",)),                      # exact of t1
         Post(id="r2", text=FOX + "s", keyphrases=("fox",)),                                # near of t1
         Post(id="r3", text="yet another unrelated text on cooking pasta at home tonight", keyphrases=("food",)),
         Post(id="r4", text="yet another unrelated text on cooking pasta at home tonight", keyphrases=("pasta",)),
         Post(id="r5", text="", keyphrases=("empty",)),                                     # never a dup
         Post(id="r6", text="", keyphrases=("empty",))]


def test_priority_reasons_and_kept_posts():
    res = deduplicate([("test", TEST), ("train", TRAIN)], NearDupConfig(), progress=False)
    assert [p.id for p in res.kept["test"]] == ["t1", "t2"]
    assert [p.id for p in res.kept["train"]] == ["r3", "r5", "r6"]
    why = {r.id: (r.reason, r.kept_set, r.kept_id) for r in res.removed}
    assert why == {"r1": ("exact", "test", "t1"), "r2": ("near", "test", "t1"),
                   "r4": ("exact", "train", "r3")}
    assert next(r for r in res.removed if r.id == "r2").jaccard >= 0.8
    summary = res.summary({"test": 2, "train": 6})
    assert summary["sets"]["train"] == {"posts": 6, "kept": 3, "removed_exact": 2, "removed_near": 1,
                                        "removed_as_duplicate_of_other_set": 2}


def test_order_decides_who_survives():
    res = deduplicate([("train", TRAIN), ("test", TEST)], NearDupConfig(), progress=False)
    assert [p.id for p in res.kept["test"]] == ["t2"]           # t1 now duplicates r1


def test_exact_only_keeps_near_copies():
    res = deduplicate([("test", TEST), ("train", TRAIN)], NearDupConfig(), near=False, progress=False)
    assert "r2" in {p.id for p in res.kept["train"]}


def test_near_chain_keeps_what_is_not_near_a_kept_post():
    """a ~ b ~ c but a !~ c: b is removed (near a); c stays unless it is near a kept post."""
    a = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    b = "alpha beta gamma delta epsilon zeta eta theta iota lambda"
    c = "alpha beta gamma delta epsilon zeta eta theta mu lambda"
    res = deduplicate([("s", [Post(id=i, text=t) for i, t in zip("abc", (a, b, c))])],
                      NearDupConfig(threshold=0.75), progress=False)
    removed = {r.id: r.kept_id for r in res.removed}
    assert removed.get("b") == "a"
    assert "c" not in removed or removed["c"] == "a"


def test_deterministic_and_cli_report(tmp_path, capsys):
    write_jsonl(TEST, tmp_path / "test.jsonl")
    write_jsonl(TRAIN, tmp_path / "train.jsonl")
    reports = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["dedup", str(tmp_path / "test.jsonl"), str(tmp_path / "train.jsonl"),
                     "-o", str(out), "--quiet"]) == 0
        report = json.loads((out / "dedup.report.json").read_text())
        reports.append((report["removed"], (out / "train.jsonl").read_text()))
        assert [p.id for p in read_jsonl(out / "train.jsonl")] == ["r3", "r5", "r6"]
    assert reports[0] == reports[1]
    assert {r["id"]: r["reason"] for r in reports[0][0]} == {"r1": "exact", "r2": "near", "r4": "exact"}
    assert json.loads(capsys.readouterr().out.splitlines()[0])["removed_total"] == 3


def test_all_duplicate_set_is_an_error(tmp_path, capsys):
    with pytest.raises(InputError, match="every post of 'copy'"):
        deduplicate([("test", TEST), ("copy", TEST[:1])], NearDupConfig(), progress=False)
    write_jsonl(TEST, tmp_path / "a.jsonl")
    write_jsonl(TEST, tmp_path / "b.jsonl")
    with pytest.raises(SystemExit) as exc:
        main(["dedup", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "o"),
              "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmkp-data: error:") and "\n" not in err


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["red", "green", "blue", "apple", "pear", "stone", "river"]),
                         min_size=3, max_size=9), min_size=2, max_size=25),
       st.integers(1, 3))
def test_dedup_properties(word_lists, n_sets):
    """No two kept posts share a normalised text; every removal points at a kept post and, for a
    near one, at Jaccard >= threshold; the result does not depend on anything but the input."""
    posts = [Post(id=f"p{i}", text=" ".join(w)) for i, w in enumerate(word_lists)]
    sets = [(f"s{k}", posts[k::n_sets]) for k in range(n_sets) if posts[k::n_sets]]
    cfg = NearDupConfig(min_chars=10)
    try:
        res = deduplicate(sets, cfg, progress=False)
    except InputError as exc:
        assert "nothing would be left" in str(exc)
        return
    kept = [p for items in res.kept.values() for p in items]
    texts = [normalise_text(p.text) for p in kept]
    assert len(texts) == len(set(texts))
    kept_ids = {p.id for p in kept}
    shingles = Shingles([normalise_text(p.text) for p in posts], cfg.ngram, progress=False)
    index = {p.id: i for i, p in enumerate(posts)}
    for r in res.removed:
        assert r.kept_id in kept_ids and r.id not in kept_ids
        assert shingles.jaccard(index[r.id], index[r.kept_id]) == pytest.approx(r.jaccard)
        assert r.jaccard >= cfg.threshold
    assert len(kept) + len(res.removed) == len(posts)
    assert deduplicate(sets, cfg, progress=False) == res
