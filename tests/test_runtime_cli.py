"""`mmkp-predict` end to end on a tiny bundle: single posts, and a battery of bad inputs in one
JSONL batch — no traceback, one clear error per bad item, every good item answered, input order
kept. Plus: neither importing mmkp_edge nor `mmkp-predict --help` loads torch."""

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
from mmkp_edge.predictor import KeyphrasePredictor
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
        "empty-text": None, "long-text": "tokens", "missing": "not found", "text-only": None,
        "surrogate": None, "text-not-str": "'text'", "directory": "not found",
    }
    images = {"zero": "zero.jpg", "truncated-jpeg": "truncated.jpg", "corrupt-jpeg": "corrupt.jpg",
              "truncated-png": "truncated.png", "corrupt-png": "corrupt.png", "text-as-jpg": "text.jpg",
              "one-pixel": "one.png", "huge": "huge.png", "16-bit": "deep.png", "cmyk": "cmyk.jpg",
              "palette-alpha": "palette.png", "animated": "animated.gif", "webp": "photo.webp",
              "exif": "rotated.jpg", "good": "good.jpg", "la": "la.png", "empty-text": "good.jpg",
              "missing": "no/such/file.jpg", "directory": "."}
    texts = {"empty-text": "", "long-text": "x" * 100_000, "surrogate": "storm \ud800 tonight"}
    lines = []
    for key in expect:
        if key == "text-not-str":
            lines.append(json.dumps({"id": key, "text": 5}).encode())
            continue
        lines.append(json.dumps({"id": key, "text": texts.get(key, f"post about {key}"),
                                 "image": images.get(key)}).encode())
    lines.insert(3, b'{"id": "latin1", "text": "caf\xe9"}')              # not UTF-8
    lines.insert(7, b'{"id": "broken", "text": ')                        # malformed JSON
    lines.insert(9, b"[1, 2, 3]")                                        # not an object
    lines.insert(11, b"")                                                # blank: skipped
    lines.insert(12, b"[" * 100_000)                                     # nested too deeply
    return lines, expect


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
    assert len(records) == len([line for line in lines if line.strip()])
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records)
    for key, word in expect.items():
        r = by_id[key]
        if word is None:
            assert r["error"] is None, (key, r["error"])
            assert r["generated_tokens"] > 0 and isinstance(r["keyphrases"], list)
        else:
            assert r["error"] and word in r["error"] and "\n" not in r["error"], (key, r["error"])
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
