"""Post readers and writers: real CMKP files, JSONL round trips, text-only fallback, and one-line
`file:line: reason` errors for malformed input."""

import json

import pytest
from PIL import Image

from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post, read_cmkp, read_jsonl, read_posts, write_cmkp, write_jsonl


def test_cmkp_test_split_has_5372_posts_with_side_files(cmkp_dir):
    posts = read_cmkp(cmkp_dir / "test_src.txt", ocr=cmkp_dir / "test_ocr_final.txt",
                      attributes=cmkp_dir / "test_attribute_cleaned.txt")
    assert len(posts) == 5372
    assert posts[0].keyphrases == ("wildflower hour",)
    assert posts[0].image is None                        # images are not shipped: text-only
    assert posts[0].attributes == ("green", "trees", "leaves", "flowers", "rocks")
    assert len({p.id for p in posts}) == 5372
    assert sum(bool(p.ocr) for p in posts) > 100


def test_cmkp_finds_images_under_image_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "A1.jpg")
    src = tmp_path / "s.txt"
    src.write_text("a cat<sep>cats;pets<sep>https://x/media/A1.jpg\n"
                   "no image<sep>dogs<sep>https://x/media/missing.jpg\n")
    posts = read_cmkp(src, image_root=tmp_path / "imgs")
    assert posts[0].image == str(tmp_path / "imgs" / "A1.jpg")
    assert posts[1].image is None
    assert posts[0].keyphrases == ("cats", "pets")


def test_jsonl_round_trip_keeps_every_field(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    posts = [Post(id="1", text="hello", image=str(tmp_path / "p.png"), keyphrases=("a", "b c"),
                  rationale="why", ocr="stop", attributes=("red", "sign")),
             Post(id="2", text="ünïcode", keyphrases=("x",))]
    write_jsonl(posts, tmp_path / "posts.jsonl")
    assert read_jsonl(tmp_path / "posts.jsonl") == posts


def test_jsonl_images_are_relative_to_the_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    (tmp_path / "posts.jsonl").write_text(
        json.dumps({"id": "a", "text": "t", "image": "p.png", "keyphrases": ["k"]}) + "\n"
        + json.dumps({"id": "b", "text": "t", "image": "gone.png", "keyphrases": ["k"]}) + "\n")
    a, b = read_posts(tmp_path / "posts.jsonl")
    assert a.image == str(tmp_path / "p.png") and b.image is None


def test_cmkp_write_then_read(tmp_path):
    posts = [Post(id="s-1", text="a b", keyphrases=("k1", "k2"))]
    write_cmkp(posts, tmp_path / "s.txt")
    back = read_cmkp(tmp_path / "s.txt")
    assert back[0].text == "a b" and back[0].keyphrases == ("k1", "k2")


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "empty file"),
    ("bin.txt", b"abc\x00def<sep>k<sep>u\n", "bin.txt:1: binary data"),
    ("fields.txt", b"ok<sep>k<sep>u\ntext only line\n", "fields.txt:2: expected 3 fields"),
    ("latin.txt", b"ok<sep>k<sep>u\ncaf\xe9<sep>k<sep>u\n", "latin.txt:2: not UTF-8"),
    ("nokp.txt", b"text<sep> ; <sep>u\n", "nokp.txt:1: no keyphrases"),
    ("bad.jsonl", b'{"id": "1", "text": "a"}\n{"id": 2, "text": \n', "bad.jsonl:2: invalid JSON"),
    ("type.jsonl", b'{"id": "1", "keyphrases": "a;b"}\n', "type.jsonl:1: 'keyphrases' must be"),
    ("dup.jsonl", b'{"id": "1"}\n{"id": "1"}\n', "dup.jsonl:2: duplicate id"),
    ("arr.jsonl", b'[1, 2]\n', "arr.jsonl:1: expected a JSON object"),
])
def test_malformed_input_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        read_posts(tmp_path / name)


def test_side_files_must_be_line_aligned(tmp_path):
    (tmp_path / "s.txt").write_text("a<sep>k<sep>u\nb<sep>k<sep>u\n")
    (tmp_path / "o.txt").write_text("only one\n")
    with pytest.raises(InputError, match="line-aligned"):
        read_cmkp(tmp_path / "s.txt", ocr=tmp_path / "o.txt")


def test_a_named_but_missing_image_is_remembered_and_written_back(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("a cat<sep>cats<sep>https://x/media/gone.jpg\nno url<sep>dogs<sep>\n")
    named, unnamed = read_cmkp(src)
    assert named.image is None and named.missing_image == "gone.jpg"
    assert unnamed.image is None and unnamed.missing_image is None
    write_jsonl([named], tmp_path / "p.jsonl")
    back = read_jsonl(tmp_path / "p.jsonl")[0]
    assert back.image is None and back.missing_image == "gone.jpg"     # the name survives
