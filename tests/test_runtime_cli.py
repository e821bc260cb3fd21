"""`mmkp-predict` end to end on a tiny bundle: single posts, and a battery of hostile inputs in one
JSONL batch — no traceback, one clear error per bad item, every good item answered (a 100k-character
post too: cut to fit, flagged `truncated` with a note on stderr), input order kept. The bad-image
policy and the image lookup are the training readers'. Plus: neither importing mmkp_edge nor
`mmkp-predict --help` loads torch."""

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from mmkp_edge.cli.predict import main
from mmkp_edge.posts import read_posts
from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import read_queries
from tiny_onnx import build_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), stop_bias=9.0)


def _rgb(h=24, w=36, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _huge_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring width×height (tiny file; the guard must refuse it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def _battery(folder) -> tuple[list[bytes], dict[str, str | None]]:
    """JSONL lines and, per id, None (must be answered) or a word its error must contain."""
    jpeg = _bytes(_rgb(), "JPEG")
    png = _bytes(_rgb(), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6                                                    # rotate 90° on display
    palette = _rgb(seed=3).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [_rgb(seed=s).convert("P") for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files = {
        "zero.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "corrupt.jpg": jpeg[:2] + bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8)),
        "truncated.png": png[: len(png) // 2],
        "corrupt.png": png[:40] + b"\x00" * 16 + png[56:],               # IDAT bytes + CRC broken
        "text.jpg": b"this is not an image, just text\n",
        "one.png": _bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "huge.png": _huge_png(20000, 20000),
        "deep.png": _bytes(Image.fromarray(np.random.default_rng(2).integers(0, 65535, (20, 30), dtype=np.uint16)),
                           "PNG"),
        "cmyk.jpg": _bytes(_rgb(seed=4).convert("CMYK"), "JPEG"),
        "palette.png": _bytes(palette, "PNG"),
        "animated.gif": gif.getvalue(),
        "photo.webp": _bytes(_rgb(seed=5), "WEBP"),
        "rotated.jpg": _bytes(_rgb(20, 40, seed=6), "JPEG", exif=exif),
        "good.jpg": jpeg,
        "la.png": _bytes(_rgb(seed=7).convert("LA"), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    expect: dict[str, str | None] = {
        "zero": "unreadable", "truncated-jpeg": "unreadable", "corrupt-jpeg": "unreadable",
        "truncated-png": "unreadable", "corrupt-png": "unreadable", "text-as-jpg": "unreadable",
        "one-pixel": None, "huge": "pixels", "16-bit": None, "cmyk": None, "palette-alpha": None,
        "animated": None, "webp": None, "exif": None, "good": None, "la": None,
        "empty-text": None, "long-text": None, "missing": "not found", "text-only": None,
        "surrogate": None, "text-not-str": "'text'", "directory": "not found",
        "long-ocr": None, "long-with-image": None, "long-words": None, "text-null": "'text'",
        "ocr-not-str": "'ocr'", "image-not-str": "'image'", "controls": None,
        "placeholder": "placeholder", "rtl-emoji": None,
    }
    images = {"zero": "zero.jpg", "truncated-jpeg": "truncated.jpg", "corrupt-jpeg": "corrupt.jpg",
              "truncated-png": "truncated.png", "corrupt-png": "corrupt.png", "text-as-jpg": "text.jpg",
              "one-pixel": "one.png", "huge": "huge.png", "16-bit": "deep.png", "cmyk": "cmyk.jpg",
              "palette-alpha": "palette.png", "animated": "animated.gif", "webp": "photo.webp",
              "exif": "rotated.jpg", "good": "good.jpg", "la": "la.png", "empty-text": "good.jpg",
              "missing": "no/such/file.jpg", "directory": ".", "long-with-image": "good.jpg"}
    texts = {"empty-text": "", "long-text": "x" * 100_000, "surrogate": "storm \ud800 tonight",
             "long-with-image": "storm over the city " * 5000, "long-words": "word " * 20_000,
             "controls": "storm\x00\x07 \u202e tonight\r\n\t", "placeholder": "look <image> here",
             "rtl-emoji": "\u0645\u0637\u0631 🌧️👨‍👩‍👧 storm"}
    raw = {"text-not-str": {"text": 5}, "text-null": {"text": None},
           "ocr-not-str": {"text": "x", "ocr": 5}, "image-not-str": {"text": "x", "image": 5},
           "long-ocr": {"text": "sale today", "ocr": "SALE 50% " * 12_000}}
    lines = []
    for key in expect:
        record = raw.get(key) or {"text": texts.get(key, f"post about {key}"), "image": images.get(key)}
        lines.append(json.dumps({"id": key, **record}).encode())
    lines.insert(3, b'{"id": "latin1", "text": "caf\xe9"}')              # not UTF-8
    lines.insert(7, b'{"id": "broken", "text": ')                        # malformed JSON
    lines.insert(9, b"[1, 2, 3]")                                        # not an object
    lines.insert(11, b"")                                                # blank: skipped
    lines.insert(12, b"[" * 100_000)                                     # nested too deeply
    return lines, expect


LONG = {"long-text", "long-ocr", "long-with-image", "long-words"}   # must come back truncated


def test_battery_of_bad_inputs_in_one_batch(bundle, tmp_path, capsys):
    lines, expect = _battery(tmp_path)
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "pred.jsonl"
    code = main(["--bundle", str(bundle), "--jsonl", str(source), "-o", str(out), "--batch-size", "4",
                 "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "posts" in err      # progress shown on stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len([line for line in lines if line.strip()]) >= 24
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records)
    for key, word in expect.items():
        r = by_id[key]
        if word is None:
            assert r["error"] is None, (key, r["error"])
            assert r["generated_tokens"] > 0 and isinstance(r["keyphrases"], list)
            assert r["truncated"] is (key in LONG), key
        else:
            assert r["error"] and word in r["error"] and "\n" not in r["error"], (key, r["error"])
            assert r["truncated"] is False
    notes = [line for line in err.splitlines() if "truncated: true" in line]
    assert sorted(n.split(": ")[2] for n in notes) == sorted(LONG)      # one note per cut post
    line_errors = [r for r in records if r["id"].startswith(str(source))]
    assert len(line_errors) == 4
    assert {w for r in line_errors for w in ("UTF-8", "invalid JSON", "JSON object", "nested")
            if w in r["error"]} == {"UTF-8", "invalid JSON", "JSON object", "nested"}
    assert [r["id"] for r in records][:3] == ["zero", "truncated-jpeg", "corrupt-jpeg"]   # input order


def test_single_post_prints_one_line_and_json(bundle, tmp_path, capsys, monkeypatch):
    image = tmp_path / "p.jpg"
    _rgb().save(image)
    expected = KeyphrasePredictor.from_bundle(bundle).predict_one("storm tonight", str(image))
    assert main(["--bundle", str(bundle), str(image), "storm tonight"]) == 0
    assert capsys.readouterr().out == "; ".join(expected.keyphrases) + "\n"
    monkeypatch.setenv("MMKP_BUNDLE", str(bundle))
    assert main(["--no-image", "storm tonight", "--json", "--think", "off"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["text"].startswith("<answer>")
    assert set(record["timings"]) == {"preprocess_s", "vision_s", "prefill_s", "decode_s", "batch_size"}


def test_single_post_with_bad_image_exits_1_or_answers_text_only(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["--bundle", str(bundle), str(bad), "storm"]) == 1
    assert "mmkp-predict: error: unreadable image" in capsys.readouterr().err
    assert main(["--bundle", str(bundle), str(bad), "storm", "--bad-image", "text-only"]) == 0
    assert "answered from the text only" in capsys.readouterr().err
    missing = str(tmp_path / "gone.jpg")
    assert main(["--bundle", str(bundle), missing, "storm"]) == 1
    assert f"mmkp-predict: error: image not found: {missing}" in capsys.readouterr().err
    assert main(["--bundle", str(bundle), missing, "storm", "--bad-image", "text-only"]) == 0
    assert "image not found" in capsys.readouterr().err


def test_missing_and_undecodable_images_follow_one_policy(bundle, tmp_path, capsys):
    """Both are the item's error by default; with --bad-image text-only both are answered exactly
    as the same post without an image, with a one-line warning in the item."""
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rows = [{"id": "missing", "text": "storm tonight", "image": "gone.jpg"},
            {"id": "bad", "text": "storm tonight", "image": "bad.jpg"},
            {"id": "none", "text": "storm tonight"}]
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for policy in ("error", "text-only"):
        out = tmp_path / f"{policy}.jsonl"
        code = main(["--bundle", str(bundle), "--jsonl", str(source), "-o", str(out), "-q",
                     "--bad-image", policy, "--max-new-tokens", "8"])
        results[policy] = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert code == (1 if policy == "error" else 0)
    capsys.readouterr()
    strict, lenient = results["error"], results["text-only"]
    assert strict["missing"]["error"] == "image not found: gone.jpg"
    assert strict["bad"]["error"].startswith("unreadable image")
    for key, problem in (("missing", "image not found: gone.jpg"), ("bad", "unreadable image")):
        r = lenient[key]
        assert r["error"] is None and problem in r["warning"] and "\n" not in r["warning"]
        assert "answered from the text only" in r["warning"]
        assert (r["text"], r["generated_tokens"]) == (lenient["none"]["text"],
                                                       lenient["none"]["generated_tokens"])
    assert lenient["none"]["warning"] is None and strict["none"]["error"] is None


def test_image_paths_are_looked_up_as_the_training_readers_do(tmp_path):
    """One lookup (mmkp_edge.images.find_image) for read_posts and read_queries: relative to the
    file, under --image-root as given or by file name (CMKP's URLs), absolute; else missing."""
    root, data = tmp_path / "images", tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    data.mkdir()
    for path in (root / "sub" / "a.png", root / "b.png", data / "c.png", tmp_path / "d.png"):
        _rgb().save(path)
    names = {"under-root": "sub/a.png", "by-name": "http://pbs.example/media/b.png",
             "beside-file": "c.png", "absolute": str(tmp_path / "d.png"), "missing": "nope.png"}
    source = data / "posts.jsonl"
    source.write_text("".join(json.dumps({"id": k, "text": "x", "image": v, "keyphrases": ["x"]})
                              + "\n" for k, v in names.items()))
    posts = {p.id: p for p in read_posts(source, image_root=root)}
    queries = {q.id: q for q in read_queries(source, root)}
    expected = {"under-root": root / "sub" / "a.png", "by-name": root / "b.png",
                "beside-file": data / "c.png", "absolute": tmp_path / "d.png", "missing": None}
    for key, path in expected.items():
        assert posts[key].image == queries[key].image == (str(path) if path else None), key
        assert posts[key].missing_image == queries[key].missing_image == \
            (names[key] if path is None else None), key


@pytest.mark.parametrize("argv", [[], ["a.jpg", "b", "c"], ["--no-image"], ["--no-image", "a", "b"],
                                  ["--jsonl", "x.jsonl", "text"], ["--think", "maybe", "--no-image", "x"],
                                  ["--no-image", "x", "-o", "out.jsonl"]])
def test_usage_errors_exit_2(bundle, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--bundle", str(bundle), *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("mmkp-predict: error:")


def test_import_and_help_load_no_torch():
    code = ("import sys\n"
            "import mmkp_edge.predictor, mmkp_edge.bundle, mmkp_edge.generate, mmkp_edge.preprocess\n"
            "from mmkp_edge.cli.predict import main\n"
            "assert main(['--help']) == 0\n"
            "print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'peft'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: mmkp-predict" in out.stdout and "Examples" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="
