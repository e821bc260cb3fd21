"""Qwen2-VL's graph wrappers equal the Hugging Face model, and their ONNX graphs (torch.onnx.export
with dynamo, opset 18, as export/graphs.py writes Idefics3's) run in onnxruntime equal the wrappers.

The end-to-end check runs what a runtime will run — numpy preprocessing and M-RoPE positions
(mmkp_edge.families.qwen2_vl), the embed / vision / decoder graphs in onnxruntime, image features
scattered into the image-pad rows, flat K/V fed back — on a left-padded batch mixing text-only rows
and rows with images of other sizes than the trace example, and compares every step's logits with
HF `generate()`'s.
"""

import warnings

import numpy as np
import pytest

from mmkp_edge.families import qwen2_vl as q
from mmkp_edge.graphs import past_names
from tolerance import fp32_atol

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from export import qwen2_vl_wrappers as W  # noqa: E402
from export.graphs import export_graph, parts_io  # noqa: E402
from qwen2_vl_tiny import (IMG, load_tiny_qwen2_vl, random_image,  # noqa: E402
                           save_tiny_qwen2_vl, settings_of)

pytestmark = pytest.mark.slow


def _atol(values, config) -> float:
    """fp32_atol for this tiny Qwen2-VL: widest reduction of text, vision and merger; depth =
    text layers + vision blocks + patch embedding, merger, lm_head."""
    text, vision = config.text_config, config.vision_config
    widest = max(text.hidden_size, text.intermediate_size, vision.embed_dim * vision.mlp_ratio,
                 vision.embed_dim * vision.spatial_merge_size ** 2,
                 vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2)
    return fp32_atol(values, widest, text.num_hidden_layers + vision.depth + 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, processor = load_tiny_qwen2_vl(save_tiny_qwen2_vl(tmp_path_factory.mktemp("ck")))
    parts = W.graph_modules(model)
    vision, embed, decoder, shape = (parts.vision_encoder, parts.embed_tokens,
                                     parts.decoder_model_merged, parts.shape)
    ios = parts_io(parts)
    out = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(0)
    ex = processor.image_processor([random_image(rng, 30, 50), random_image(rng, 20, 20)],
                                   return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    b, t, p = 2, 5, 3
    mask = torch.ones(b, p + t, dtype=torch.long)
    mask[0, :2] = 0                                                         # left-padded row
    examples = {
        "vision_encoder": (vision, (ex["pixel_values"], ex["image_grid_thw"])),
        "embed_tokens": (embed, (torch.randint(0, shape.vocab_size, (b, t), generator=gen),)),
        "decoder_model_merged": (decoder, (
            torch.randn(b, t, shape.hidden_size, generator=gen), mask,
            torch.arange(p, p + t).expand(3, b, t).contiguous(),
            *[torch.randn(b, shape.num_kv_heads, p, shape.head_dim, generator=gen)
              for _ in range(2 * shape.num_layers)])),
    }
    sessions = {}
    for name, (module, args) in examples.items():
        graph = export_graph(name, module, args, ios[name], out)
        sessions[name] = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    return model, processor, (vision, embed, decoder, shape), sessions


def test_vision_graph_equals_hf_image_features(exported):
    model, processor, (vision, *_), sessions = exported
    rng = np.random.default_rng(1)
    prep = q.Qwen2VLImagePreprocessor(settings_of(processor.image_processor))
    images = [prep(random_image(rng, h, w)) for h, w in [(9, 9), (100, 40), (40, 41), (3, 90)]]
    pixels = np.concatenate([i.pixel_values for i in images])                # (N, C·T·P·P)
    grid = np.concatenate([i.image_grid_thw for i in images])                # (I, 3)
    with torch.no_grad():
        ref = torch.cat(model.model.get_image_features(
            torch.from_numpy(pixels), torch.from_numpy(grid)).pooler_output)  # (tokens, D)
        wrapped = vision(torch.from_numpy(pixels), torch.from_numpy(grid))
    assert wrapped.shape == (sum(i.num_image_tokens for i in images), model.config.text_config.hidden_size)
    assert torch.abs(wrapped - ref).max().item() <= _atol(ref, model.config)
    got = sessions["vision_encoder"].run(None, {"pixel_values": pixels, "image_grid_thw": grid})[0]
    assert np.abs(got - ref.numpy()).max() <= _atol(ref, model.config)


def test_onnx_pipeline_reproduces_generate_logits(exported):
    model, processor, (_, _, _, shape), sessions = exported
    rng = np.random.default_rng(2)
    texts = ["hi cat", f"a {IMG} the storm", f"{IMG} two {IMG} dogs play",
             "coffee and cake on a rainy morning in the park with friends"]
    images = [random_image(rng, 30, 50), random_image(rng, 70, 20), random_image(rng, 9, 9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    steps = 4
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()   # (B, T)
    prompt_len = ids.shape[1]
    new_tokens = gen.sequences[:, prompt_len:].numpy()                      # (B, steps)

    prep = q.Qwen2VLImagePreprocessor(settings_of(processor.image_processor))
    prepared = [prep(img) for img in images]
    pixels = np.concatenate([p.pixel_values for p in prepared])
    grid = np.concatenate([p.image_grid_thw for p in prepared])
    features = sessions["vision_encoder"].run(None, {"pixel_values": pixels, "image_grid_thw": grid})[0]
    embeds = sessions["embed_tokens"].run(None, {"input_ids": ids})[0]      # (B, T, D)
    image_rows = ids == model.config.image_token_id                         # (B, T)
    assert image_rows.sum() == features.shape[0]
    embeds[image_rows] = features                                           # row-major = HF order
    positions, deltas = q.mrope_position_ids(ids, mask, grid, image_token_id=model.config.image_token_id,
                                             merge_size=model.config.vision_config.spatial_merge_size)
    past = {n: np.zeros((ids.shape[0], shape.num_kv_heads, 0, shape.head_dim), np.float32)
            for n in past_names(shape.num_layers)}
    decoder = sessions["decoder_model_merged"]
    for k in range(steps + 1):
        outs = decoder.run(None, {"inputs_embeds": embeds, "attention_mask": mask,
                                  "position_ids": positions, **past})
        if k == steps:
            break
        ref = gen.logits[k]                                                 # (B, V)
        assert np.abs(outs[0] - ref.numpy()).max() <= _atol(ref, model.config), k
        past = dict(zip(past_names(shape.num_layers), outs[1:]))
        positions = q.decode_position_ids(mask.sum(-1), deltas)             # (3, B, 1)
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)    # (B, T+k+1)
        embeds = sessions["embed_tokens"].run(None, {"input_ids": new_tokens[:, k:k + 1]})[0]
