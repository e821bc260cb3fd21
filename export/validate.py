"""Export's checks, run right after the graphs are written: a bundle is only as good as its parity.

1. `check_logits` — every graph against the torch wrapper it was traced from, on random inputs of
   other sizes than the trace example (a prefill with an empty past and a decode step with a long
   past, left-padded). Each output (image features, embeddings, logits, present K/V) must agree
   within `rtol` × its largest |value| — the rounding two fp32 implementations of the same math may
   differ by grows with the values, so a fixed absolute bound is too tight for a real student's
   large logits and meaningless for small ones; present K/V are compared
   at real (unpadded) positions only: pad rows attend to nothing and their values are never read.
2. `check_greedy` — the torch-free runtime (mmkp_edge.predictor, exactly what `mmkp-predict`
   runs) against the PyTorch student's greedy generation (train.generation.generate_batch), on one
   left-padded batch of probe posts with and without images: the token ids must be identical.
3. `check_agreement` — for int8 / float16 bundles: greedy keyphrases of the new bundle against the
   fp32 bundle on `agreement_posts` probe posts (64 by default: 8 posts resolve agreement only in
   steps of 12.5 %), real ones when `probe_file` names a posts file; the share of posts with the
   same keyphrases (after stemming) must reach `min_agreement`.

Both generators follow `mmkp_edge.decoding`'s rules (stop at an end token or `</answer>`, tags
masked when think=off) and are compared on their tokens up to and including the stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmkp_edge.decoding import DecodingRules, rules_for_manifest
from mmkp_edge.graph_io import (DECODER, EMBED, GRAPH_FILES, IMAGE_FEATURES, INPUT_IDS, INPUTS_EMBEDS,
                                VISION)
from mmkp_edge.manifest import Manifest
from mmkp_edge.phrases import stem_key
from mmkp_edge.posts import Post

from .graphs import axis_positions, parts_io
from .wrappers import GraphModules

PROBE_TEXTS = (
    "Storm hits the city tonight, stay safe everyone",
    "happy birthday",
    "Coffee and cake on a rainy morning with friends and family at home",
    "Great game tonight, what a win for the team!",
    "new music video out today",
    "Sunset at the beach",
    "The election results are in and the vote was close",
    "cute dog in the park near a big tree",
)
PROBE_IMAGE_SIZES = ((40, 56), (64, 48), (33, 90), (120, 80), (48, 48))   # (width, height)


@dataclass(frozen=True)
class ValidateConfig:
    rtol: float = 1e-3            # max |ORT − torch| ÷ max |torch| per output. ORT fuses and blocks
                                  # differently: rounding only, ~√n·2^-24 per sum of n terms per
                                  # layer (SmolVLM-256M: n ≤ 1536, 30 layers → ~1e-4, worst case
                                  # n·2^-24·31 ≈ 3e-3); a wrong graph is off by ~1
    new_tokens: int = 16          # greedy tokens compared per probe post
    probe_posts: int = 8          # posts in the greedy batch (runtime vs torch, one batch)
    agreement_posts: int = 64     # posts in the int8 / fp16 agreement probe
    probe_file: str | None = None # agreement on the first posts of this JSONL / CMKP file instead
    min_agreement: float = 0.95   # int8 / fp16: share of probe posts with the fp32 keyphrases
    think: str = "auto"           # think mode of the probe prompts

    def validate(self) -> "ValidateConfig":
        if self.rtol <= 0 or self.new_tokens < 1 or self.probe_posts < 2 or self.agreement_posts < 2:
            raise ValueError("rtol must be > 0, new_tokens ≥ 1, probe_posts and agreement_posts ≥ 2")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be within [0, 1], got {self.min_agreement}")
        return self


def probe_posts(folder: Path, count: int, seed: int = 0) -> list[Post]:
    """A fixed, varied probe set: texts of different lengths, every other post with a random
    image (odd sizes, so resizing is exercised) written as PNG under `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    posts = []
    for i in range(count):
        image = None
        if i % 2 == 0:
            w, h = PROBE_IMAGE_SIZES[(i // 2) % len(PROBE_IMAGE_SIZES)]
            image = str(folder / f"probe_{i}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
        text = PROBE_TEXTS[i % len(PROBE_TEXTS)]
        if i >= len(PROBE_TEXTS):                        # past the first round: pairs of texts
            text += " " + PROBE_TEXTS[(i // len(PROBE_TEXTS) + i) % len(PROBE_TEXTS)].lower()
        posts.append(Post(id=f"probe-{i}", text=text, image=image))
    return posts


def agreement_probe(folder: Path, cfg: ValidateConfig) -> list[Post]:
    """The agreement probe: the first `agreement_posts` posts of `probe_file`, or synthetic ones."""
    if cfg.probe_file:
        from mmkp_edge.posts import read_posts, text_only_where_missing
        posts = text_only_where_missing(read_posts(cfg.probe_file)[:cfg.agreement_posts])
        if len(posts) < 2:
            raise ValueError(f"{cfg.probe_file}: needs at least 2 posts for the agreement probe")
        return posts
    return probe_posts(folder, cfg.agreement_posts)


# ---------------------------------------------------------------- 1. logits

def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_diff(got: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(got.astype(np.float64) - ref.double().numpy()).max()) if got.size else 0.0


def _max_abs(ref: torch.Tensor) -> float:
    return float(ref.abs().max()) if ref.numel() else 0.0


def check_logits(parts: GraphModules, bundle: Path, rtol: float,
                 seed: int = 1) -> dict:
    """Max |ORT − torch| per graph output group on fresh random inputs, against rtol × the
    group's max |torch value|."""
    s = parts.shape
    ios = parts_io(parts)
    gen = torch.Generator().manual_seed(seed)
    out, scale = {}, {}
    with torch.no_grad():
        pixels = parts.vision_encoder.example(3, gen)   # e.g. (N, 3, S, S) | patches + grids
        got = _session(bundle / GRAPH_FILES[VISION]).run(
            None, dict(zip(ios[VISION].inputs, (p.numpy() for p in pixels))))
        ref = parts.vision_encoder(*pixels)
        out[IMAGE_FEATURES], scale[IMAGE_FEATURES] = _max_diff(got[0], ref), _max_abs(ref)
        ids = torch.randint(0, s.vocab_size, (3, 7), generator=gen)           # (B, T)
        got = _session(bundle / GRAPH_FILES[EMBED]).run(None, {INPUT_IDS: ids.numpy()})
        ref = parts.embed_tokens(ids)
        out[INPUTS_EMBEDS], scale[INPUTS_EMBEDS] = _max_diff(got[0], ref), _max_abs(ref)
        decoder = _session(bundle / GRAPH_FILES[DECODER])
        logits, kv, scale["logits"], scale["present"] = 0.0, 0.0, 0.0, 0.0
        for batch, seq, past in ((3, 7, 0), (3, 1, 9)):                       # prefill, decode
            mask = torch.ones(batch, past + seq, dtype=torch.long)            # (B, P+T)
            mask[0, :3] = 0                                                   # left padding
            pos = torch.where(mask == 0, 1, mask.cumsum(-1) - 1)[:, -seq:]   # (B, T)
            pos = axis_positions(pos, parts.position_axes)                    # (B, T) | (A, B, T)
            embeds = torch.randn(batch, seq, s.hidden_size, generator=gen)    # (B, T, D)
            cache = [torch.randn(batch, s.num_kv_heads, past, s.head_dim, generator=gen)
                     for _ in range(2 * s.num_layers)]                        # (B, kv, P, hd)
            args = (embeds, mask, pos, *cache)
            got = decoder.run(None, dict(zip(ios[DECODER].inputs,
                                             (a.numpy() for a in args))))
            ref = parts.decoder_model_merged(*args)
            logits = max(logits, _max_diff(got[0], ref[0]))
            scale["logits"] = max(scale["logits"], _max_abs(ref[0]))
            real = mask.bool().numpy()                                        # (B, P+T)
            for g, r in zip(got[1:], ref[1:]):                                # (B, kv, P+T, hd)
                kv = max(kv, float(np.abs(g - r.numpy()).transpose(0, 2, 1, 3)[real].max()))
                scale["present"] = max(scale["present"],
                                       float(np.abs(r.numpy()).transpose(0, 2, 1, 3)[real].max()))
        out["logits"], out["present"] = logits, kv
    passed = all(out[k] <= rtol * scale[k] for k in out)
    return {"max_abs_diff": out, "max_abs_value": scale, "rtol": rtol, "passed": bool(passed)}


# ---------------------------------------------------------------- 2. greedy parity

def rules(manifest: Manifest, cfg: ValidateConfig) -> DecodingRules:
    return rules_for_manifest(manifest.special_tokens, cfg.think)


def runtime_tokens(bundle: Path, posts: list[Post], cfg: ValidateConfig, batch_size: int = 0):
    """The torch-free runtime's greedy output for the posts, as one left-padded batch (or batches
    of `batch_size`: batched output equals one-by-one output, so this changes no token)."""
    from mmkp_edge.predictor import KeyphrasePredictor

    predictor = KeyphrasePredictor.from_bundle(bundle)
    preds = predictor.predict(posts, think=cfg.think, batch_size=batch_size or len(posts),
                              max_new_tokens=cfg.new_tokens)
    errors = [f"{p.id}: {p.error}" for p in preds if p.error]
    if errors:
        raise RuntimeError(f"runtime refused probe posts: {'; '.join(errors[:3])}")
    return preds, predictor.manifest


def check_greedy(model, processor, bundle: Path, posts: list[Post], cfg: ValidateConfig) -> dict:
    """Runtime vs PyTorch greedy tokens on one left-padded batch (with and without images)."""
    from train.generation import generate_batch

    preds, manifest = runtime_tokens(bundle, posts, cfg)
    reference = generate_batch(model, processor, posts, think=cfg.think,
                               max_new_tokens=cfg.new_tokens)
    r = rules(manifest, cfg)
    same, mismatches = 0, []
    for post, ref, got in zip(posts, reference, preds):
        a, b = r.cut(ref.token_ids), r.cut(got.token_ids)
        if a == b:
            same += 1
        else:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            mismatches.append({"id": post.id, "first_diff_at": first, "torch": a, "runtime": b})
    with_image = sum(p.image is not None for p in posts)
    return {"posts": len(posts), "with_image": with_image, "new_tokens": cfg.new_tokens,
            "identical": same, "passed": same == len(posts), "mismatches": mismatches[:3]}


# ---------------------------------------------------------------- 3. agreement with fp32

def check_agreement(reference: Path, candidate: Path, posts: list[Post],
                    cfg: ValidateConfig) -> dict:
    """Share of probe posts whose greedy keyphrases (stemmed) match the fp32 bundle's."""
    ref, manifest = runtime_tokens(reference, posts, cfg, batch_size=16)
    got, _ = runtime_tokens(candidate, posts, cfg, batch_size=16)
    return agreement_of(ref, got, rules(manifest, cfg), cfg.min_agreement)


def agreement_of(ref, got, r: DecodingRules, min_agreement: float) -> dict:
    """Agreement of two prediction lists for the same posts (keyphrases stemmed; token streams)."""
    same_kp = sum([stem_key(k) for k in a.keyphrases] == [stem_key(k) for k in b.keyphrases]
                  for a, b in zip(ref, got))
    same_tokens = sum(r.cut(a.token_ids) == r.cut(b.token_ids) for a, b in zip(ref, got))
    agreement = same_kp / len(ref)
    return {"posts": len(ref), "keyphrase_agreement": agreement,
            "token_sequence_agreement": same_tokens / len(ref),
            "min_agreement": min_agreement, "passed": agreement >= min_agreement}
