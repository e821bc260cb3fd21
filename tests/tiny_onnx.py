"""A tiny but real VLM bundle built with onnx.helper, for torch-free runtime tests.

The graphs do real work so the runtime's invariants mean something: `embed_tokens` is an embedding
table; `decoder_model_merged` adds learned position embeddings (so position ids matter), runs
`num_layers` layers of causal multi-head attention with a KV cache (past ⧺ new keys/values,
causal + padding mask from attention_mask) and a tanh MLP, and returns last-position logits and
`present.*`; `vision_encoder` maps pixels to `tokens_per_image` features with a MatMul. Weights are
random with a large std so greedy output varies; `stop_bias` / `think_bias` raise the logits of the
stop tokens / `<think>` so tests can make rows finish early or tempt the model to reason.
The tokenizer is a byte-level BPE (any text, any language encodes) with the chat special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmkp_edge import prompt
from mmkp_edge.graph_io import (ATTENTION_MASK, DECODER, EMBED, GRAPH_FILES, IMAGE_FEATURES, INPUT_IDS,
                                INPUTS_EMBEDS, LOGITS, PIXEL_VALUES, POSITION_IDS, VISION, past_names,
                                present_names)
from mmkp_edge.manifest import (ChatInfo, ImageInfo, Manifest, ModelInfo, PromptInfo, SpecialTokens,
                                TokenizerInfo)

IR_VERSION = 10          # onnx 1.23 writes IR 14; onnxruntime 1.32 loads ≤ 13 (DESIGN.md §5)
OPSET = 18
SPECIALS = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
            "<global-img>", *prompt.SPECIAL_TOKENS] + [f"<row_{r}_col_{c}>" for r in (1, 2, 3)
                                                       for c in (1, 2, 3)]
CORPUS = ["Predict the keyphrases (hashtags without '#') for this post, most important first.",
          "Post: a storm over the city tonight, rain and thunder", "Text in the image: sale 50%",
          "User: Assistant: summer beach sunset; travel; food; music; love; nyc marathon"] * 3


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _init(rng, *shape, std=None):
    std = (1.0 / np.sqrt(shape[0])) * 1.5 if std is None else std
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _model(nodes, name, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def embed_graph(table: np.ndarray) -> onnx.ModelProto:
    V, D = table.shape
    return _model([helper.make_node("Gather", ["table", INPUT_IDS], [INPUTS_EMBEDS])], "embed",
                  [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["B", "T"])],
                  [helper.make_tensor_value_info(INPUTS_EMBEDS, TensorProto.FLOAT, ["B", "T", D])],
                  {"table": table})


def vision_graph(weight: np.ndarray, side: int, tokens: int) -> onnx.ModelProto:
    D = weight.shape[1]
    nodes = [helper.make_node("Reshape", [PIXEL_VALUES, "shape"], ["patches"]),     # (N, tok, 3SS/tok)
             helper.make_node("MatMul", ["patches", "w"], ["proj"]),                # (N, tok, D)
             helper.make_node("Tanh", ["proj"], [IMAGE_FEATURES])]
    return _model(nodes, "vision",
                  [helper.make_tensor_value_info(PIXEL_VALUES, TensorProto.FLOAT, ["N", 3, side, side])],
                  [helper.make_tensor_value_info(IMAGE_FEATURES, TensorProto.FLOAT, ["N", tokens, D])],
                  {"w": weight, "shape": np.array([0, tokens, -1], np.int64)})


def decoder_graph(rng, D: int, V: int, layers: int, heads: int, head_dim: int, max_pos: int,
                  lm_bias: np.ndarray) -> onnx.ModelProto:
    n, init = [], {}

    def node(op, ins, outs, **attrs):
        n.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    def const(name, value):
        init[name] = np.asarray(value)
        return name

    init["pos_table"] = _init(rng, max_pos, D, std=0.5)
    const("one", np.array(1, np.int64))
    const("zero", np.array(0, np.int64))
    const("ax0", np.array([0], np.int64))
    const("ax1", np.array([1], np.int64))
    const("ax12", np.array([1, 2], np.int64))
    const("neg1", np.array([-1], np.int64))
    const("fzero", np.array(0.0, np.float32))
    const("fneg", np.array(-1e9, np.float32))
    const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    const("merge_heads", np.array([0, 0, heads * head_dim], np.int64))
    x = node("Add", [INPUTS_EMBEDS, node("Gather", ["pos_table", POSITION_IDS], ["pos_emb"])], ["x0"])
    # mask bias (B, 1, T, S): key j visible to query i iff j <= past + i and attention_mask[j] == 1
    S = node("Gather", [node("Shape", [ATTENTION_MASK], ["mshape"]), "one"], ["S"])
    T = node("Gather", [node("Shape", [INPUTS_EMBEDS], ["eshape"]), "one"], ["T"])
    q_idx = node("Range", [node("Sub", [S, T], ["past_len"]), S, "one"], ["q_idx"])       # (T,)
    k_idx = node("Range", ["zero", S, "one"], ["k_idx"])                                   # (S,)
    causal = node("LessOrEqual", [node("Unsqueeze", [k_idx, "ax0"], ["k_row"]),
                                  node("Unsqueeze", [q_idx, "ax1"], ["q_col"])], ["causal"])  # (T, S)
    pad = node("Unsqueeze", [node("Cast", [ATTENTION_MASK], ["mask_b"], to=TensorProto.BOOL), "ax12"],
               ["pad"])                                                                    # (B, 1, 1, S)
    bias = node("Where", [node("And", [causal, pad], ["allowed"]), "fzero", "fneg"], ["bias"])
    for i in range(layers):
        p = f"l{i}_"
        for w, shape in (("ln", (D,)),):
            init[p + w] = np.ones(shape, np.float32)
        for w in ("wq", "wk", "wv", "wo"):
            init[p + w] = _init(rng, D, D if w != "wo" else D)
        init[p + "w1"], init[p + "w2"] = _init(rng, D, 2 * D), _init(rng, 2 * D, D)
        h = node("LayerNormalization", [x, p + "ln"], [p + "h"], axis=-1)

        def heads_of(w):
            y = node("MatMul", [h, p + w], [p + w + "_y"])                                 # (B, T, D)
            y = node("Reshape", [y, "split_heads"], [p + w + "_r"])                         # (B, T, H, hd)
            return node("Transpose", [y], [p + w + "_t"], perm=[0, 2, 1, 3])               # (B, H, T, hd)

        q, k, v = heads_of("wq"), heads_of("wk"), heads_of("wv")
        past, present = past_names(layers)[2 * i:2 * i + 2], present_names(layers)[2 * i:2 * i + 2]
        K = node("Concat", [past[0], k], [present[0]], axis=2)                  # (B, H, S, hd)
        Vv = node("Concat", [past[1], v], [present[1]], axis=2)
        scores = node("MatMul", [q, node("Transpose", [K], [p + "kT"], perm=[0, 1, 3, 2])], [p + "s"])
        scores = node("Add", [node("Mul", [scores, "scale"], [p + "ss"]), bias], [p + "sb"])  # (B, H, T, S)
        att = node("MatMul", [node("Softmax", [scores], [p + "p"], axis=-1), Vv], [p + "a"])    # (B, H, T, hd)
        att = node("Reshape", [node("Transpose", [att], [p + "at"], perm=[0, 2, 1, 3]), "merge_heads"],
                   [p + "am"])                                                                # (B, T, D)
        x = node("Add", [x, node("MatMul", [att, p + "wo"], [p + "o"])], [p + "x1"])
        mlp = node("MatMul", [node("Tanh", [node("MatMul", [x, p + "w1"], [p + "m1"])], [p + "m2"]),
                              p + "w2"], [p + "m3"])
        x = node("Add", [x, mlp], [p + "x2"])
    last = node("Squeeze", [node("Gather", [x, "neg1"], ["last3"], axis=1), "ax1"], ["last"])  # (B, D)
    init["lm_head"], init["lm_bias"] = _init(rng, D, V, std=1.0), lm_bias
    node("Add", [node("MatMul", [last, "lm_head"], ["lm"]), "lm_bias"], [LOGITS])              # (B, V)
    fl = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(INPUTS_EMBEDS, fl, ["B", "T", D]),
              helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["B", "S"]),
              helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, ["B", "T"])]
    outputs = [helper.make_tensor_value_info(LOGITS, fl, ["B", V])]
    inputs += [helper.make_tensor_value_info(n, fl, ["B", heads, "P", head_dim])
               for n in past_names(layers)]
    outputs += [helper.make_tensor_value_info(n, fl, ["B", heads, "S", head_dim])
                for n in present_names(layers)]
    return _model(n, "decoder", inputs, outputs, init)


def build_bundle(out: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 16, heads: int = 2,
                 side: int = 16, tokens_per_image: int = 4, splitting: bool = False,
                 stop_bias: float = 0.0, think_bias: float = 0.0, max_context: int = 512) -> Path:
    """Write a complete bundle (graphs, tokenizer.json, manifest.json) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    V = tok.get_vocab_size()
    lm_bias = np.zeros(V, np.float32)
    lm_bias[[ids["<end_of_utterance>"], ids[prompt.ANSWER_CLOSE]]] += stop_bias
    lm_bias[ids[prompt.THINK_OPEN]] += think_bias
    lm_bias[ids["<pad>"]] -= 100.0
    graphs = {EMBED: embed_graph(_init(rng, V, hidden, std=1.0)),
              VISION: vision_graph(_init(rng, 3 * side * side // tokens_per_image, hidden),
                                             side, tokens_per_image),
              DECODER: decoder_graph(rng, hidden, V, layers, heads, hidden // heads,
                                                    max_context, lm_bias)}
    for name, model in graphs.items():
        onnx.save(model, str(out / GRAPH_FILES[name]))
    image = ImageInfo(size_longest_edge=side * 3, max_image_size=side, tokens_per_image=tokens_per_image,
                      token_string="<fake_token_around_image><global-img>{image_tokens}<fake_token_around_image>",
                      tile_string="<fake_token_around_image><row_{row}_col_{col}>{image_tokens}",
                      do_image_splitting=splitting)
    manifest = Manifest(
        family="idefics3", source="tests/tiny_onnx.py", stage="test",
        prompt=PromptInfo(id=prompt.PROMPT_ID, hash=prompt.PROMPT_HASH),
        chat=ChatInfo(with_image="<|im_start|>User:{image}{prompt}<end_of_utterance>\nAssistant:",
                      text_only="<|im_start|>User:{prompt}<end_of_utterance>\nAssistant:"),
        tokenizer=TokenizerInfo(file="tokenizer.json", add_special_tokens=False),
        special_tokens=SpecialTokens(pad=ids["<pad>"], eos=(ids["<end_of_utterance>"],),
                                     image=ids["<image>"], think_open=ids[prompt.THINK_OPEN],
                                     think_close=ids[prompt.THINK_CLOSE], answer_open=ids[prompt.ANSWER_OPEN],
                                     answer_close=ids[prompt.ANSWER_CLOSE]),
        image=image,
        model=ModelInfo(num_layers=layers, num_kv_heads=heads, head_dim=hidden // heads, hidden_size=hidden,
                        vocab_size=V, max_context=max_context),
        graphs={name: GRAPH_FILES[name] for name in graphs},
        files={}, opset=OPSET, validation={"note": "random toy weights"})
    manifest.with_files(out).save(out)
    return out


def rewrite_manifest(bundle: Path, **changes) -> None:
    """Edit manifest.json's top-level keys in place (for loader rejection tests)."""
    path = Path(bundle) / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
