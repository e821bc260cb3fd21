"""mmkp_edge.families.qwen2_vl equals Hugging Face's Qwen2-VL on a tiny random model built in code.

Preprocessing vs `Qwen2VLImageProcessorPil` over many random images (noise and drawn shapes; tiny
ones under min_pixels, large ones over max_pixels, extreme aspect ratios), prompt token ids vs
`Qwen2VLProcessor`, prompt positions vs `Qwen2VLModel.get_rope_index` on a left-padded batch mixing
text-only rows and rows with images of different sizes, and the decode-step rule vs what
`generate()` computes (the same logits, step by step, through a manual cached forward fed our
positions). That the runtime module never imports torch is tests/test_imports.py's check.
"""

import warnings

import numpy as np
import pytest
from PIL import Image

from mmkp_edge.families import qwen2_vl as q
from tolerance import fp32_atol

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from qwen2_vl_tiny import (IMAGE, IMG, load_tiny_qwen2_vl, random_image,  # noqa: E402
                           save_tiny_qwen2_vl, settings_of)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny_qwen2_vl(save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2vl")))


def _sizes(rng, n: int) -> list[tuple[int, int]]:
    """Random (h, w): tiny, ordinary, large (> max_pixels), and very elongated (≤ 150:1)."""
    out = [(1, 1), (3, 7), (8, 8), (1, 150), (150, 1), (9, 200)]
    while len(out) < n:
        kind = rng.integers(4)
        if kind == 0:
            out.append(tuple(int(v) for v in rng.integers(1, 16, 2)))
        elif kind == 1:
            out.append(tuple(int(v) for v in rng.integers(16, 120, 2)))
        elif kind == 2:
            out.append(tuple(int(v) for v in rng.integers(120, 400, 2)))
        else:
            short = int(rng.integers(2, 12))
            out.append((short, short * int(rng.integers(10, 150)))[:: 1 if rng.random() < 0.5 else -1])
    return out


CONFIGS = {
    "tiny-checkpoint": {},
    "qwen2-vl-defaults-small-budget": dict(patch_size=14, merge_size=2, min_pixels=56 * 56,
                                           max_pixels=28 * 28 * 16),
    "bilinear-merge1-t1-own-norm": dict(patch_size=6, merge_size=1, temporal_patch_size=1,
                                        min_pixels=36, max_pixels=36 * 40, resample=2,
                                        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_pixels_and_grid_match_hf_qwen2_vl_image_processor(overrides):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hf = Qwen2VLImageProcessorPil(**{**IMAGE, **overrides})
    ours = q.Qwen2VLImagePreprocessor(settings_of(hf).to_dict())      # through the JSON form
    rng = np.random.default_rng(len(str(overrides)))
    seen_small = seen_large = False
    for h, w in _sizes(rng, 24):
        image = random_image(rng, h, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = hf(image, return_tensors="np")
        got = ours(image)
        assert got.image_grid_thw.dtype == np.int64 and got.pixel_values.dtype == np.float32
        assert got.image_grid_thw.tolist() == ref["image_grid_thw"].tolist(), (h, w)
        assert got.pixel_values.shape == ref["pixel_values"].shape, (h, w)
        # PIL resamples uint8 in integer arithmetic; then 3 elementwise IEEE ops per value (rescale,
        # − mean, ÷ std) and copies, no reductions: bitwise equal here, and a library reordering
        # them may differ by ≤ 3 roundings of |value|
        assert np.abs(got.pixel_values - ref["pixel_values"]).max() <= \
            fp32_atol(ref["pixel_values"], reduction=1, depth=3), (h, w)
        assert got.num_image_tokens == int(ref["image_grid_thw"].prod()) // hf.merge_size ** 2
        f = hf.patch_size * hf.merge_size      # smart_resize branches on the area of the sides
        area = round(h / f) * f * (round(w / f) * f)   # rounded to multiples of f, not on h·w
        seen_small |= area < hf.size["shortest_edge"]
        seen_large |= area > hf.size["longest_edge"]
    assert seen_small and seen_large        # both budget branches of smart_resize were exercised


def test_refusals_match_hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    with pytest.raises(ValueError):
        smart_resize(1, 201, 8, 256, 3072)
    with pytest.raises(ValueError, match="aspect ratio"):
        q.smart_resize(1, 201, 8, 256, 3072)
    for h, w in [(1, 200), (7, 1000), (333, 333), (28, 29), (12, 20), (4, 4)]:   # 12/8 = 1.5: ties
        assert q.smart_resize(h, w, 8, 256, 3072) == smart_resize(h, w, 8, 256, 3072)
    with pytest.raises(ValueError, match="RGB"):
        q.Qwen2VLImagePreprocessor({})(Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match="unknown"):
        q.Qwen2VLImageSettings.from_dict({"patch": 14})


def test_prompt_token_ids_match_hf_processor(tiny):
    from tokenizers import Tokenizer

    _, processor = tiny
    tok = Tokenizer.from_str(processor.tokenizer.backend_tokenizer.to_str())   # runtime tokenizer
    ours_pre = q.Qwen2VLImagePreprocessor(settings_of(processor.image_processor))
    rng = np.random.default_rng(3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a post"}]}]
    template = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert IMG in template
    for h, w in [(30, 50), (70, 20), (2, 3), (300, 280), (16, 16)]:
        image = random_image(rng, h, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = processor(text=[template], images=[image], return_tensors="np")
        prepared = ours_pre(image)
        text = template.replace(IMG, q.image_token_string(q.token_string(IMG, q.IMAGE_PAD), q.IMAGE_PAD,
                                                         prepared.num_image_tokens))
        assert tok.encode(text, add_special_tokens=False).ids == ref["input_ids"][0].tolist(), (h, w)
        assert prepared.image_grid_thw.tolist() == ref["image_grid_thw"].tolist()


def _batch(processor, rng):
    """Left-padded prompts: text-only, one image, two images of different sizes, long text-only."""
    texts = ["hi cat", f"a {IMG} the storm", f"{IMG} two {IMG} dogs play",
             "coffee and cake on a rainy morning in the park with friends"]
    images = [random_image(rng, 30, 50), random_image(rng, 70, 20), random_image(rng, 9, 9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(text=texts, images=images, padding=True, return_tensors="pt")


def test_prompt_position_ids_match_hf_get_rope_index(tiny):
    model, processor = tiny
    inputs = _batch(processor, np.random.default_rng(5))
    mask = inputs["attention_mask"].numpy()
    assert (mask[:, 0] == 0).any()                                       # left padding is present
    ref_pos, ref_delta = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"])
    pos, delta = q.mrope_position_ids(
        inputs["input_ids"].numpy(), mask, inputs["image_grid_thw"].numpy(),
        image_token_id=model.config.image_token_id, merge_size=model.config.vision_config.spatial_merge_size)
    assert pos.dtype == np.int64 and pos.shape == (3, *mask.shape)
    assert np.array_equal(pos, ref_pos.numpy())
    assert np.array_equal(delta, ref_delta.numpy().reshape(-1))
    assert (delta[[1, 2]] < 0).all()                       # image rows: positions shorter than tokens
    text_rows = [0, 3]                                     # text-only rows: ordinary 1-D positions
    plain = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)
    assert (delta[text_rows] == 0).all()
    assert np.array_equal(pos[:, text_rows], np.broadcast_to(plain[text_rows], (3, 2, mask.shape[1])))


def test_decode_positions_reproduce_generate(tiny):
    """Our prompt and decode-step positions through a manual cached forward give generate()'s
    logits at every step (generate's own 3-D positions come from get_rope_index + 'previous + 1')."""
    model, processor = tiny
    inputs = _batch(processor, np.random.default_rng(6))
    steps = 5
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    prompt_len = inputs["input_ids"].shape[1]
    new_tokens = gen.sequences[:, prompt_len:]                            # (B, steps)
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    pos, delta = q.mrope_position_ids(ids, mask, inputs["image_grid_thw"].numpy(),
                                      image_token_id=model.config.image_token_id,
                                      merge_size=model.config.vision_config.spatial_merge_size)
    text, vision = model.config.text_config, model.config.vision_config
    widest = max(text.intermediate_size, vision.embed_dim * vision.mlp_ratio,
                 vision.embed_dim * vision.spatial_merge_size ** 2)
    depth = text.num_hidden_layers + vision.depth + 3                   # + merger, norm, lm_head
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                    position_ids=torch.from_numpy(pos), use_cache=True)
        cache, attn = out.cache, inputs["attention_mask"]
        for k in range(steps):
            logits = out.logits[:, -1]                                    # (B, V)
            ref = gen.logits[k]
            assert torch.abs(logits - ref).max().item() <= fp32_atol(ref, widest, depth), k
            past = attn.sum(-1).numpy()                                   # (B,) valid tokens so far
            step_pos = q.decode_position_ids(past, delta)                 # (3, B, 1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = model(input_ids=new_tokens[:, k:k + 1], attention_mask=attn,
                        position_ids=torch.from_numpy(step_pos), cache=cache, use_cache=True)
            cache = out.cache


def test_mrope_refuses_mismatched_images():
    ids = np.array([[5, 9, 9, 9, 9, 6]])
    with pytest.raises(ValueError, match="more image-token runs"):
        q.mrope_position_ids(ids, None, None, image_token_id=9, merge_size=2)
    with pytest.raises(ValueError, match="does not match"):
        q.mrope_position_ids(ids, None, np.array([[1, 4, 6]]), image_token_id=9, merge_size=2)
    with pytest.raises(ValueError, match="more rows"):
        q.mrope_position_ids(ids, None, np.array([[1, 4, 4], [1, 2, 2]]), image_token_id=9, merge_size=2)
    pos, delta = q.mrope_position_ids(ids, None, np.array([[1, 4, 4]]), image_token_id=9, merge_size=2)
    assert pos[:, 0].tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]
    assert delta.tolist() == [-2]
