"""The demo teacher through the real `cot-data` command: rationales come from the generator's
ground truth, its deliberate mistakes are rejected by the exact filter, and kept answers equal gold."""

import json

from mmkp_edge.parser import parse
from mmkp_edge.phrases import stem_key
from mmkp_edge.posts import read_jsonl
from train.cot import load_rationales
from train.cot.command import main
from train.demo_data import make_demo_data


def test_demo_teacher_writes_filtered_rationales(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_posts=120, seed=1, image_size=32)
    out = tmp_path / "rationales.jsonl"
    code = main(["--posts", str(data.root / "train.jsonl"), "-o", str(out), "--teacher", "demo",
                 "--model", "demo-ground-truth", "--set", "options.error_rate=0.3"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    gold = {p.id: p.keyphrases for p in read_jsonl(data.train)}
    assert sorted(r["id"] for r in records) == sorted(gold)                 # every post once
    kept = [r for r in records if r["kept"]]
    rejected = [r for r in records if not r["kept"]]
    assert kept and rejected                                                # mistakes were made
    assert all(r["reason"] == "mismatch" for r in rejected)
    for r in kept:
        assert [stem_key(k) for k in r["answer"]] == [stem_key(k) for k in gold[r["id"]]]
    for r in rejected:                                  # the mistake: the last keyphrase dropped
        assert len(r["answer"]) == len(gold[r["id"]]) - 1
    rationales = load_rationales(out)
    assert set(rationales) == {r["id"] for r in kept}
    some = next(iter(kept))
    assert parse(f"<think>{rationales[some['id']]}</think>").thought
