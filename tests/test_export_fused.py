"""The fused decoder graph (export/fused_decoder.py), its in-place KV cache, and int8 embeddings.

Invariants: the fused graph computes the traced wrapper's logits and K/V on a left-padded batch;
a bundle with the fused decoder generates the same greedy tokens as one with the traced decoder;
the in-place cache gives exactly the copying cache's logits, also when every step has to regrow
its buffers; a model the fused writer cannot express is refused (fused) or traced (auto); int8
embedding rows are within half a quantization step of the float table.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.exporter import ExportConfig, export_bundle
from export.fused_decoder import supports, write_decoder
from export.graphs import decoder_kind
from export.quantize import Int8Config
from export.source import load_source
from export.families import family_parts
from mmkp_edge import graphs as runtime_graphs
from mmkp_edge.errors import InputError
from mmkp_edge.manifest import Manifest
from mmkp_edge.predictor import KeyphrasePredictor
from train.tiny import init_tiny

from tolerance import student_atol

TEXTS = ["Storm hits the city tonight, stay safe", "coffee",
         "Two dogs play in the park near a big tree on a sunny day", "new music video out today"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_source(str(tiny_dir)).model.eval()


@pytest.fixture(scope="module")
def bundles(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for kind in ("fused", "traced"):
        out[kind] = root / kind
        report = export_bundle(ExportConfig(source=str(tiny_dir), out=str(out[kind]), decoder=kind,
                                            validate=kind == "fused"))   # int8 derives from it
        assert report.status == ("passed" if kind == "fused" else "skipped")
    return out


def test_fused_graph_equals_the_traced_wrapper_on_a_left_padded_batch(model, tmp_path):
    parts = family_parts(model)
    s = parts.shape
    write_decoder(parts.decoder_model_merged.language_model, parts.decoder_model_merged.lm_head,
                  s, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "decoder_model_merged.onnx"),
                                   providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 9, dtype=torch.long)                                   # (B, T)
    mask[0, :4] = 0
    mask[2, :1] = 0
    past = [torch.zeros(3, s.num_kv_heads, 0, s.head_dim) for _ in range(2 * s.num_layers)]
    names = [i.name for i in session.get_inputs()]
    real = mask.bool().numpy()[:, None, :, None]                                # (B, 1, T, 1)
    for step in range(3):                  # the prefill, then two decode steps on the grown past
        width = mask.shape[1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -(9 if step == 0 else 1):]
        embeds = torch.randn(3, positions.shape[1], s.hidden_size, generator=gen)
        with torch.no_grad():
            ref = parts.decoder_model_merged(embeds, mask, positions, *past)
        got = session.run(None, {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy(),
                                 "position_ids": positions.numpy(),
                                 **dict(zip(names[3:], (p.numpy() for p in past)))})
        tol = student_atol(ref[0], model.config)
        assert np.abs(got[0] - ref[0].numpy()).max() <= tol
        assert got[0].shape == tuple(ref[0].shape)                              # (B, V)
        for mine, theirs in zip(got[1:], ref[1:]):      # K/V at real positions (pads are never read)
            assert mine.shape == tuple(theirs.shape)
            keep = np.broadcast_to(real[:, :, :width], mine.shape)
            assert np.abs(mine[keep] - theirs.numpy()[keep]).max() <= student_atol(theirs, model.config)
        # a wrong graph is far outside the bound: the logits of another batch row
        assert np.abs(got[0][0] - ref[0].numpy()[1]).max() > 100 * tol
        past = list(ref[1:])
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        real = np.concatenate([real, np.ones((3, 1, 1, 1), bool)], axis=2)


def test_fused_and_traced_bundles_generate_the_same_tokens(bundles):
    outputs = {}
    for kind, path in bundles.items():
        assert Manifest.load(path).model.decoder == kind
        predictor = KeyphrasePredictor.from_bundle(path)
        outputs[kind] = [p.token_ids for p in predictor.predict(TEXTS, think="auto", batch_size=4,
                                                                max_new_tokens=24)]
    assert outputs["fused"] == outputs["traced"]
    fused = onnx.load(str(bundles["fused"] / "decoder_model_merged.onnx"), load_external_data=False)
    ops = {n.op_type for n in fused.graph.node}
    assert {"GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization"} <= ops


def test_in_place_cache_equals_the_copying_cache_also_when_it_regrows(bundles, monkeypatch):
    predictor = KeyphrasePredictor.from_bundle(bundles["fused"])
    graphs = predictor.bundle.graphs
    requests = [predictor.request(t, "on", 20) for t in TEXTS]

    def run(headroom: int, in_place: bool):
        monkeypatch.setattr(runtime_graphs, "HEADROOM", headroom)
        monkeypatch.setattr(type(graphs), "in_place", property(lambda self: in_place))
        gen = predictor.generator(requests[:2], "on", 20)
        logits = []
        for step in range(40):
            if step == 3:                                     # two prompts join mid-decode
                gen.add(requests[2:], 20)
            if gen.done:
                break
            gen.step()
            logits.append({i: v.copy() for i, v in gen.logits.items()})
            if step == 1:
                assert gen._cache.in_place == in_place
        return [o.tokens for o in gen.outputs], logits

    copying, copying_logits = run(64, False)
    for headroom in (64, 0):                        # 0: every step reallocates the buffers
        tokens, logits = run(headroom, True)
        assert tokens == copying
        for mine, theirs in zip(logits, copying_logits, strict=True):
            assert mine.keys() == theirs.keys()
            for i in mine:   # exact: both run GroupQueryAttention's one kernel on the same values,
                # over the same keys in the same order; only the buffer's row stride differs
                # (capacity vs total length), which changes no arithmetic on any CPU
                assert np.array_equal(mine[i], theirs[i])


def test_a_model_the_fused_writer_cannot_express_is_refused_or_traced(tiny_dir, tmp_path, model):
    parts = family_parts(model)
    assert supports(parts.decoder_model_merged.language_model) is None
    assert decoder_kind(parts, "auto") == "fused"
    config = parts.decoder_model_merged.language_model.config
    config.attention_bias = True
    try:
        assert "bias" in supports(parts.decoder_model_merged.language_model)
        assert decoder_kind(parts, "auto") == "traced"
        with pytest.raises(ValueError, match="--decoder fused cannot write"):
            decoder_kind(parts, "fused")
    finally:
        config.attention_bias = False
    with pytest.raises(InputError, match="decoder must be one of"):
        export_bundle(ExportConfig(source=str(tiny_dir), out=str(tmp_path / "x"), decoder="fast"))


def test_int8_embedding_rows_are_within_half_a_step_of_the_table(bundles, tmp_path):
    out = tmp_path / "int8"
    export_bundle(ExportConfig(source=str(bundles["fused"]), out=str(out), precision="int8",
                               validate=False))
    assert Manifest.load(out).quantization["embeddings"] == "int8"
    table = next(t for t in onnx.load(str(bundles["fused"] / "embed_tokens.onnx")).graph.initializer)
    table = onnx.numpy_helper.to_array(table)                                   # (V, D)
    ids = np.array([[0, 5, 17, table.shape[0] - 1], [3, 3, 2, 1]], np.int64)    # (B, T)
    run = lambda b: ort.InferenceSession(str(b / "embed_tokens.onnx")).run(None, {"input_ids": ids})[0]  # noqa: E731
    exact, quantized = run(bundles["fused"]), run(out)
    assert quantized.shape == exact.shape == (2, 4, table.shape[1])
    block = Int8Config().block_size
    step = np.abs(table[ids].reshape(2, 4, -1, block)).max(-1, keepdims=True) / 127   # (B, T, D/b, 1)
    error = np.abs(quantized - exact).reshape(2, 4, -1, block)
    # |x − rint(x/s)·s| ≤ s/2 in exact arithmetic; the fp32 division x/s and the graph's product
    # q·s each add at most |q|·s·2^-24 ≤ 127·s·2^-24, whatever the CPU (IEEE rounding, one op each)
    assert (error <= step * (0.5 + 2 * 127 * 2.0 ** -24)).all()
    assert error.max() > 0                                    # it is quantized, not copied
    kept = tmp_path / "kept"
    export_bundle(ExportConfig(source=str(bundles["fused"]), out=str(kept), precision="int8",
                               validate=False, int8=Int8Config(keep_embeddings=True)))
    assert np.array_equal(run(kept), exact)


@pytest.mark.parametrize("kind", ["fused", "traced"])
def test_reusing_the_prompt_prefix_changes_no_token(bundles, kind, tmp_path, monkeypatch):
    """Rows that start with the shared prefix are prefilled from its cached K/V (fused: one row per
    call; traced: batched), an image post beside them whole; tokens equal a run without reuse."""
    from PIL import Image

    from mmkp_edge.posts import Post

    image = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    posts = [Post(id=str(i), text=t) for i, t in enumerate(TEXTS)]
    posts.insert(2, Post(id="img", text="a photo of the sea", image=str(image)))
    predictor = KeyphrasePredictor.from_bundle(bundles[kind])
    requests = [predictor.request(p, "on", 16) for p in posts]
    prefix = predictor.bundle.encoder.prefix_ids()
    starts = [np.array_equal(r.input_ids[: len(prefix)], prefix) for r in requests]
    assert len(prefix) > 3 and starts == [True, True, False, True, True]

    fed: list[int] = []
    decode = type(predictor.bundle.graphs).decode
    monkeypatch.setattr(type(predictor.bundle.graphs), "decode",
                        lambda self, embeds, *a: fed.append(embeds.shape[0] * embeds.shape[1])  # rows × tokens
                        or decode(self, embeds, *a))

    def tokens(reuse: bool) -> list[list[int]]:
        fed.clear()
        gen = predictor.generator(requests[:3], "on", 16, reuse_prefix=reuse)
        gen.step()
        gen.add(requests[3:], 16)                    # two more join the running batch
        out = [o.tokens for o in gen.run()]
        return out, list(fed)

    whole, fed_whole = tokens(False)
    reused, fed_reused = tokens(True)
    assert reused == whole
    # the prefix was computed once (p tokens), then not fed again for the 4 rows that start with it
    assert len(prefix) in fed_reused
    assert sum(fed_reused) <= sum(fed_whole) - 3 * len(prefix)


def test_a_fused_bundle_on_an_older_onnxruntime_is_refused_in_one_line(bundles):
    from mmkp_edge.bundle import check_runtime_version

    fused, traced = Manifest.load(bundles["fused"]), Manifest.load(bundles["traced"])
    with pytest.raises(InputError, match=r"needs onnxruntime >= 1\.22 \(installed: 1\.21\.1\)"):
        check_runtime_version(fused, "1.21.1")
    check_runtime_version(traced, "1.21.1")           # the traced graph loads on any supported one
    check_runtime_version(fused, "1.22.0")
    check_runtime_version(fused, "1.32.0.dev20261101")


def test_int8_keeps_the_named_projections_float(bundles, tmp_path):
    """`keep_matmuls` leaves exactly the named MatMuls float32 (one per layer for down_proj), and a
    name that matches nothing is refused rather than silently quantizing everything."""
    from collections import Counter

    layers = Manifest.load(bundles["fused"]).model.num_layers

    def ops(bundle):
        graph = onnx.load(str(bundle / "decoder_model_merged.onnx"), load_external_data=False).graph
        return Counter(n.op_type for n in graph.node)

    full, kept = tmp_path / "full", tmp_path / "kept"
    export_bundle(ExportConfig(source=str(bundles["fused"]), out=str(full), precision="int8",
                               validate=False))
    export_bundle(ExportConfig(source=str(bundles["fused"]), out=str(kept), precision="int8",
                               validate=False, int8=Int8Config(keep_matmuls=("down_proj",))))
    assert ops(kept)["MatMul"] == ops(full)["MatMul"] + layers
    assert ops(kept)["MatMulNBits"] == ops(full)["MatMulNBits"] - layers
    assert Manifest.load(kept).quantization["float32_matmuls"] == ["down_proj"]
    with pytest.raises(ValueError, match="no MatMul weight is named like"):
        export_bundle(ExportConfig(source=str(bundles["fused"]), out=str(tmp_path / "none"),
                                   precision="int8", validate=False,
                                   int8=Int8Config(keep_matmuls=("nothing_like_this",))))
    from export.cli import main                  # the CLI's flags reach the quantizer and manifest
    cli = tmp_path / "cli"
    assert main([str(bundles["fused"]), "-o", str(cli), "--int8", "--no-validate", "--block-size",
                 "16", "--asymmetric", "--fp32-matmuls", "down_proj"]) == 0
    q = Manifest.load(cli).quantization
    assert (q["block_size"], q["symmetric"], q["float32_matmuls"]) == (16, False, ["down_proj"])
    assert ops(cli)["MatMul"] == ops(kept)["MatMul"]
    for bad in ("down_proj", ("",), ("down_proj", " ")):   # a str reads as its letters; "" is everywhere
        with pytest.raises(ValueError, match="non-empty weight-name parts"):
            Int8Config(keep_matmuls=bad).validate()
