"""The evidence teacher: each gold keyphrase is explained by evidence a reader can check in the post,
cue words come only from *other* posts (leave-one-out), and through the real `cot-data` command
every post with gold keyphrases is kept with the gold answer."""

import json

import pytest

from mmkp_edge.errors import InputError
from mmkp_edge.parser import parse
from mmkp_edge.phrases import stem_key
from mmkp_edge.posts import Post, write_jsonl
from train.cot.command import main
from train.cot.config import CotDataConfig
from train.cot.evidence_teacher import MIN_SUPPORT, Corpus, EvidenceTeacher, build


def _post(i, text, keyphrases, ocr=""):
    return Post(id=f"p{i}", text=text, keyphrases=tuple(keyphrases), ocr=ocr)


def test_present_keyphrases_name_where_they_are():
    posts = [_post(0, "storm hits the city tonight", ["storm"], ocr="weather alert"),
             _post(1, "stay inside everyone", ["weather alert"])]
    teacher = EvidenceTeacher(Corpus(posts))
    assert "storm is named in the text." in teacher.rationale(posts[0])
    assert "weather alert is not in the post" in teacher.rationale(posts[1])
    ocr_only = _post(2, "stay inside everyone", ["weather alert"], ocr="big weather alert now")
    assert "weather alert is written in the image." in teacher.rationale(ocr_only)


def test_cue_words_come_from_other_posts_only():
    # "ozil" comes with #arsenal in MIN_SUPPORT other posts: a cue. "wenger" only in this post.
    others = [_post(i, f"ozil scores again {i}", ["arsenal"]) for i in range(MIN_SUPPORT)]
    target = _post(9, "ozil and wenger tonight", ["arsenal", "wenger out"])
    teacher = EvidenceTeacher(Corpus(others + [target]))
    why = teacher.rationale(target)
    assert "arsenal is not in the post, but ozil points to it." in why
    # The only post with both "wenger" and #wenger out is this one: no cue, whatever this post says.
    assert "wenger out is not in the post; the post as a whole implies it." in why
    # One other post fewer and ozil is no longer evidence (support below MIN_SUPPORT).
    fewer = EvidenceTeacher(Corpus(others[1:] + [target]))
    assert "ozil points" not in fewer.rationale(target)


def test_cot_data_keeps_every_post_with_gold_and_refuses_predict_mode(tmp_path):
    posts = [_post(i, f"rainy morning coffee number {i}", ["coffee", "rainy day"]) for i in range(6)]
    posts.append(_post(6, "no tags on this one", []))
    src = tmp_path / "posts.jsonl"
    write_jsonl(posts, src)
    out = tmp_path / "rationales.jsonl"
    assert main(["--posts", str(src), "-o", str(out), "--teacher", "evidence",
                 "--model", "corpus-evidence-v1"]) == 0
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {p.id for p in posts}
    assert not records["p6"]["kept"] and records["p6"]["reason"] == "no-gold"
    for p in posts[:6]:
        r = records[p.id]
        assert r["kept"] and r["reason"] == "exact"
        assert [stem_key(k) for k in parse(r["output"]).keyphrases] == [stem_key(k) for k in p.keyphrases]
        assert "rainy day is not in the post, but rainy" in r["rationale"]   # 5 other posts say so
    with pytest.raises(InputError, match="cannot predict"):
        build(CotDataConfig(posts=str(src), output=str(out), teacher="evidence", gold=False))
