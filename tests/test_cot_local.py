"""The local teacher on the tiny random-weight student (CPU): the pipeline runs end to end, every
post gets exactly one record with token usage (its garbage rationales are rejected, with reasons),
and gathering requests into batches gives the same replies as one post at a time."""

import json

import pytest
from PIL import Image

from train.cot import local_teacher
from train.cot.config import CotDataConfig
from train.cot.filter import FAILED
from train.cot.records import read_records
from train.cot.run import run_cot_data
from train.tiny import init_tiny

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(init_tiny(tmp_path_factory.mktemp("tiny") / "student"))


@pytest.fixture
def posts(tmp_path):
    Image.new("RGB", (48, 40), (10, 120, 200)).save(tmp_path / "sky.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rows = [{"id": "a", "text": "Sunset at the beach", "keyphrases": ["beach", "sunset"],
             "image": "sky.png"},
            {"id": "b", "text": "Great game tonight", "keyphrases": ["football"]},
            {"id": "c", "text": "The storm hit the city", "keyphrases": ["storm"],
             "image": "broken.jpg"},
            {"id": "d", "text": "Coffee and cake", "keyphrases": ["food", "coffee"]},
            {"id": "e", "text": "Two dogs in the park", "keyphrases": ["dogs"], "image": "sky.png"}]
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(posts, out, tiny, batch_size):
    config = CotDataConfig(posts=posts, output=str(out), teacher="local", model=tiny,
                           batch_size=batch_size, max_tokens=MAX_NEW, device="cpu")
    return run_cot_data(config), {r["id"]: r for r in read_records(out)}


def test_local_teacher_runs_and_batching_changes_nothing(tiny, posts, tmp_path, monkeypatch):
    sizes, generate = [], local_teacher.generate_replies

    def spy(student, requests, max_new_tokens):
        sizes.append(len(requests))
        return generate(student, requests, max_new_tokens)

    monkeypatch.setattr(local_teacher, "generate_replies", spy)
    summary, batched = run(posts, tmp_path / "batched.jsonl", tiny, batch_size=3)
    assert sizes == [3, 2]                      # the pipeline's calls were gathered into batches
    assert summary["processed"] == 5 and len(batched) == 5
    for r in batched.values():
        assert r["teacher"] == "local" and r["model"] == tiny and r["error"] is None
        assert r["reason"] != FAILED and r["output"] is not None
        assert r["usage"]["prompt_tokens"] > 0 and 0 < r["usage"]["completion_tokens"] <= MAX_NEW
        assert r["kept"] == (r["reason"] == "exact")
    assert batched["c"]["image_problem"].startswith("unreadable image")
    assert sum(summary["reasons"].values()) == 5

    _, single = run(posts, tmp_path / "single.jsonl", tiny, batch_size=1)
    assert sizes == [3, 2, 1, 1, 1, 1, 1]
    assert {i: r["output"] for i, r in single.items()} == \
        {i: r["output"] for i, r in batched.items()}


def test_local_teacher_refuses_sampling(tiny, posts, tmp_path):
    from mmkp_edge.errors import InputError
    config = CotDataConfig(posts=posts, output=str(tmp_path / "o.jsonl"), teacher="local",
                           model=tiny, samples=2, temperature=0.7)
    with pytest.raises(InputError, match="greedily"):
        run_cot_data(config)
