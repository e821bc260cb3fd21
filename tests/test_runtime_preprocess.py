"""The runtime's numpy/PIL preprocessing and prompt rendering equal the student's HF processor.

The HF comparisons import transformers (skipped where it is absent); the runtime code under test
never does.
"""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from mmkp_edge import prompt
from mmkp_edge.chat import render
from mmkp_edge.families.idefics3 import ImagePreprocessor, image_token_string
from mmkp_edge.images import load_image
from mmkp_edge.manifest import ChatInfo, ImageInfo
from tolerance import fp32_atol

TOKEN = "<fake_token_around_image><global-img>{image_tokens}<fake_token_around_image>"
TILE = "<fake_token_around_image><row_{row}_col_{col}>{image_tokens}"


def _info(**kw) -> ImageInfo:
    base = dict(size_longest_edge=96, max_image_size=32, tokens_per_image=4, token_string=TOKEN,
                tile_string=TILE)
    return ImageInfo(**{**base, **kw})


def _random_image(rng) -> bytes:
    """A random image of a random size and mode, as file bytes (so it goes through load_image)."""
    h, w = (int(v) for v in rng.integers(1, 220, 2))
    mode = rng.choice(["RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16"])
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    return buf.getvalue()


CONFIGS = [dict(), dict(do_image_splitting=True), dict(resample=3, image_mean=(0.48, 0.46, 0.41),
                                                       image_std=(0.27, 0.26, 0.28)),
           dict(do_image_splitting=True, size_longest_edge=250, max_image_size=48, resample=2)]


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "split", "bicubic-clip-norm", "split-big"])
def test_pixels_match_hf_idefics3_processor(config):
    transformers = pytest.importorskip("transformers")
    del transformers
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    info = _info(**config)
    hf = Idefics3ImageProcessorPil(size={"longest_edge": info.size_longest_edge},
                                   max_image_size={"longest_edge": info.max_image_size},
                                   do_image_splitting=info.do_image_splitting, resample=info.resample,
                                   image_mean=list(info.image_mean), image_std=list(info.image_std))
    ours = ImagePreprocessor(info)
    rng = np.random.default_rng(sum(map(ord, str(config))))
    for _ in range(25):
        image = load_image(_random_image(rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = hf(image, return_tensors="np", return_row_col_info=True)
        got = ours(image)
        assert (got.rows, got.cols) == (ref["rows"][0][0], ref["cols"][0][0])
        assert got.pixel_values.shape == ref["pixel_values"][0].shape
        assert got.pixel_values.dtype == np.float32
        # PIL resamples uint8 in integer arithmetic; then 3 elementwise IEEE ops per value (rescale,
        # − mean, ÷ std) with no reductions: equal ops round equally on every CPU (0 here), and a
        # library that reorders them may differ by ≤ 3 roundings of |value|
        assert np.abs(got.pixel_values - ref["pixel_values"][0]).max() <= \
            fp32_atol(ref["pixel_values"][0], reduction=1, depth=3), image.size


@pytest.mark.parametrize("splitting", [False, True])
def test_image_tokens_match_hf_idefics3_processor(tmp_path, splitting):
    pytest.importorskip("transformers")
    from transformers import Idefics3Processor, PreTrainedTokenizerFast
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from mmkp_edge.bundle import Bundle
    from tiny_onnx import build_bundle

    bundle = Bundle.load(build_bundle(tmp_path, splitting=splitting))
    info = bundle.manifest.image
    hf = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": info.size_longest_edge}, max_image_size={"longest_edge": info.max_image_size},
            do_image_splitting=splitting),
        tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")),
        image_seq_len=info.tokens_per_image)
    rng = np.random.default_rng(7)
    for h, w in [(40, 70), (70, 40), (16, 16), (5, 130), (48, 48)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = hf(text=["User:<image>a post"], images=[[image]], add_special_tokens=False,
                     return_tensors="np")
        prepared = bundle.preprocessor(image)
        text = "User:" + image_token_string(info, prepared.rows, prepared.cols) + "a post"
        ids = bundle.encoder.tokenizer.encode(text, add_special_tokens=False).ids
        assert ref["input_ids"][0].tolist() == ids, (h, w)
        assert np.abs(ref["pixel_values"][0] - prepared.pixel_values).max() <= \
            fp32_atol(ref["pixel_values"][0], reduction=1, depth=3)      # see above


def test_unsplit_image_string():
    s = image_token_string(_info(), 0, 0)
    assert s == "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    split = image_token_string(_info(), 1, 2)
    assert split.startswith("<fake_token_around_image><row_1_col_1><image>")
    assert split.count("<image>") == 4 * 3 and "<row_1_col_2>" in split and split.count("\n") == 2


def test_render_fills_placeholders_once_and_appends_the_prime():
    chat = ChatInfo(with_image="U:{image}{prompt}|A:", text_only="U:{prompt}|A:")
    user = prompt.user_text("literal {image} and {prompt} in a post")
    out = render(chat, user, "<IMG>", "off")
    assert out == f"U:<IMG>{user}|A:{prompt.ANSWER_OPEN}"
    assert render(chat, "x", None, "on") == f"U:x|A:{prompt.THINK_OPEN}"
    assert render(chat, "x", None, "auto") == "U:x|A:"


def test_preprocessing_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        ImagePreprocessor(_info())(Image.new("L", (8, 8)))


def test_decode_keeps_the_tags_and_drops_other_special_tokens(tmp_path):
    from mmkp_edge.bundle import Bundle
    from tiny_onnx import build_bundle

    bundle = Bundle.load(build_bundle(tmp_path))
    tok = bundle.encoder.tokenizer
    st = bundle.manifest.special_tokens
    ids = [st.think_open, *tok.encode("why", add_special_tokens=False).ids, st.think_close, st.image,
           st.answer_open, *tok.encode("storm; rain", add_special_tokens=False).ids, st.answer_close, *st.eos]
    tags = {st.think_open: "<think>", st.think_close: "</think>", st.answer_open: "<answer>",
            st.answer_close: "</answer>"}
    assert bundle.encoder.decode(ids, tags) == "<think>why</think><answer>storm; rain</answer>"


@pytest.mark.parametrize("think", ["off", "on", "auto"])
def test_prompt_ids_follow_the_training_contract(tmp_path, think):
    """ids = encode(chat with image string and user text) + encode(prime), as training's
    train.families.PromptPieces.encode builds them (skipped where train is absent)."""
    families = pytest.importorskip("train.families")
    from mmkp_edge.bundle import Bundle
    from tiny_onnx import build_bundle

    bundle = Bundle.load(build_bundle(tmp_path))
    m = bundle.manifest
    pieces = families.PromptPieces(
        with_image=m.chat.with_image, text_only=m.chat.text_only,
        image_string=image_token_string(m.image), image_placeholder=m.image.image_token,
        add_special_tokens=m.tokenizer.add_special_tokens, image_splitting=False,
        eos_token="<end_of_utterance>", pad_token="<pad>")
    for text, ocr, grid in [("storm {image} {prompt} tonight", "", (0, 0)), ("", "sale", None),
                            ("ünïcödé #Tag", "", (0, 0))]:
        ours = bundle.encoder.encode(text, ocr, grid, think).tolist()
        theirs = pieces.encode(bundle.encoder.tokenizer, prompt.user_text(text, ocr), grid is not None,
                               prompt.prime(think))
        assert ours == theirs
