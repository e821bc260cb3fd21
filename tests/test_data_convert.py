"""Conversion to posts JSONL: CMKP with side files, LLaVA/AimKP conversation JSON, plain record
lists; anything else fails with one line naming the file and record."""

import json

import pytest

from mmkp_edge.cli.data import main
from mmkp_edge.data.convert import load_posts
from mmkp_edge.errors import InputError
from mmkp_edge.posts import read_jsonl

LLAVA = [
    {"id": "p1", "image": "img/a.jpg",
     "conversations": [{"from": "human", "value": "<image>\nsunset over the bay tonight"},
                       {"from": "gpt", "value": "sunset; #BayArea; sunsets"}]},
    {"id": "p2", "image": "img/missing.jpg",
     "conversations": [{"from": "human", "value": "<image>\nmatch day"},
                       {"from": "gpt", "value": "<think>a football crest</think><answer>mufc</answer>"}]},
]


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_llava_json(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    posts = load_posts(_write(tmp_path / "train.json", LLAVA))
    assert [p.id for p in posts] == ["p1", "p2"]
    assert posts[0].text == "sunset over the bay tonight"
    assert posts[0].keyphrases == ("sunset", "bay area")          # stem-duplicate "sunsets" dropped
    assert posts[0].image == str(tmp_path / "img" / "a.jpg")
    assert posts[1].image is None and posts[1].rationale == "a football crest"
    assert posts[1].keyphrases == ("mufc",)


def test_llava_text_pattern(tmp_path):
    rec = [{"id": "x", "image": None, "conversations": [
        {"from": "user", "value": "<image>\nPredict hashtags. Post: rainy monday blues"},
        {"from": "assistant", "value": "rain"}]}]
    posts = load_posts(_write(tmp_path / "d.json", rec), text_pattern=r"Post: (?P<text>.*)")
    assert posts[0].text == "rainy monday blues"
    with pytest.raises(InputError, match="does not match"):
        load_posts(_write(tmp_path / "d.json", rec), text_pattern=r"Tweet: (?P<text>.*)")


def test_plain_records_and_string_keyphrases(tmp_path):
    recs = [{"text": "hello world", "keyphrases": "greeting; world", "image": None},
            {"id": "b", "text": "second", "keyphrases": ["two"]}]
    posts = load_posts(_write(tmp_path / "recs.json", recs))
    assert [(p.id, p.keyphrases) for p in posts] == [("recs-0", ("greeting", "world")), ("b", ("two",))]


def test_llava_jsonl_lines(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in LLAVA) + "\n")
    assert [p.keyphrases for p in load_posts(tmp_path / "d.jsonl")] == [("sunset", "bay area"), ("mufc",)]


@pytest.mark.parametrize("obj,match", [
    ({"not": "a list"}, "expected a JSON list"),
    ([{"foo": 1}], "record 0: expected a JSON list"),
    ([{"id": "a", "conversations": [{"from": "human", "value": "x"}]}], "record 0: needs a human"),
    ([{"id": "a", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": " ; "}]}],
     "no keyphrases"),
    ([{"id": "a", "image": ["1.jpg", "2.jpg"], "conversations": [
        {"from": "human", "value": "x"}, {"from": "gpt", "value": "k"}]}], "at most one"),
    ([], "no posts"),
])
def test_bad_json_shapes(tmp_path, obj, match):
    with pytest.raises(InputError, match=match):
        load_posts(_write(tmp_path / "bad.json", obj))


def test_cmkp_with_side_files_via_cli(tmp_path, capsys):
    src = tmp_path / "t_src.txt"
    src.write_text("a cat<sep>cats;pets<sep>http://x/c1.jpg\nthe dog<sep>dog<sep>http://x/d1.jpg\n")
    (tmp_path / "ocr.txt").write_text("meow\n\n")
    (tmp_path / "attr.txt").write_text("grey fur\nbrown grass\n")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "c1.jpg").write_bytes(b"x")
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(src), "--ocr", str(tmp_path / "ocr.txt"), "--attributes",
                 str(tmp_path / "attr.txt"), "--image-root", str(tmp_path / "imgs"), "-o", str(out),
                 "--quiet"]) == 0
    posts = read_jsonl(out)
    assert [(p.text, p.keyphrases, p.ocr, p.attributes) for p in posts] == [
        ("a cat", ("cats", "pets"), "meow", ("grey", "fur")), ("the dog", ("dog",), "", ("brown", "grass"))]
    assert posts[0].image == str((tmp_path / "imgs" / "c1.jpg").resolve()) and posts[1].image is None
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["posts"] == 2 and report["posts_with_image"] == 1


@pytest.mark.parametrize("name,content,needle", [
    ("missing.txt", None, "no such file"),
    ("empty_src.txt", "", "empty file"),
    ("empty.json", "[]", "no posts"),
    ("bad_src.txt", "fine<sep>k<sep>u\nno separators here\n", "bad_src.txt:2:"),
    ("bad.jsonl", '{"text": "ok", "keyphrases": ["a"]}\n{not json\n', "bad.jsonl:2:"),
    ("bad.json", '[{"text": "ok"},', "invalid JSON"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, name, content, needle):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / name), "-o", str(tmp_path / "o.jsonl")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and err.startswith("mmkp-data: error:")
