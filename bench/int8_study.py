"""Which int8 settings keep a real student's keyphrases: agreement with fp32, size and speed.

Each variant is derived from one validated fp32 bundle by `mmkp-export`'s own path (no re-tracing),
then scored on the same real posts by the export gate's own comparison (`export.validate.agreement_of`:
greedy keyphrases, stemmed, vs the fp32 bundle's, computed once) and timed at batch 1 through the runtime's
`Generator` (decode ms per step; prefill excluded). Agreement is also reported on the posts where
fp32's every greedy step won by at least 0.5 and 1 logit (`MARGINS`): flips that sit only on near-ties
trade one about equally likely answer for another, flips on clear decisions are damage. Prints a
table, ends with one JSON line.

    python -m bench.int8_study runs/real/bundle-fp32 --posts runs/real/data/test.jsonl --posts-count 300
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from mmkp_edge.metrics import score
from mmkp_edge.posts import read_posts, text_only_where_missing

VARIANTS = {   # name → Int8Config fields
    "b32": dict(block_size=32),
    "b32+fp32 embeddings": dict(block_size=32, keep_embeddings=True),
    "b64": dict(block_size=64),
    "b32+fp32 head": dict(block_size=32, keep_lm_head=True),
    "b32 acc1": dict(block_size=32, accuracy_level=1),
    "b16": dict(block_size=16),
    "b16 asym": dict(block_size=16, symmetric=False),
    "b32 asym": dict(block_size=32, symmetric=False),
    # which projection's int8 rounding flips answers: one kind kept float32 at a time
    "b32+fp32 qkv": dict(block_size=32, keep_matmuls=("qkv_proj",)),
    "b32+fp32 o_proj": dict(block_size=32, keep_matmuls=("o_proj",)),
    "b32+fp32 gate_up": dict(block_size=32, keep_matmuls=("gate_up_proj",)),
    "b32+fp32 down": dict(block_size=32, keep_matmuls=("down_proj",)),
    # the two that helped most on their own (finer weight scales; down_proj's outlier inputs kept
    # out of int8 activations), then float activations everywhere: what each costs in speed
    "b16 asym+fp32 down": dict(block_size=16, symmetric=False, keep_matmuls=("down_proj",)),
    "b16 asym acc1": dict(block_size=16, symmetric=False, accuracy_level=1),
    "b32 acc1+fp32 down": dict(block_size=32, accuracy_level=1, keep_matmuls=("down_proj",)),
}


MARGINS = (0.5, 1.0)   # fp32 decision margins (logits) the agreement is also reported above


def _margins(bundle: Path, posts, tokens: int) -> list[float]:
    """Per post, how near a tie fp32's closest greedy decision was: the smallest top-1 − top-2
    logit gap over its steps (suppressed tokens excluded; batch 1, which gives the same tokens as
    the batched reference: bench/RESULTS.md "batched vs one by one")."""
    import numpy as np

    from mmkp_edge.predictor import KeyphrasePredictor

    predictor = KeyphrasePredictor.from_bundle(bundle)
    out = []
    for post in posts:
        gen = predictor.generator([predictor.request(post, "off")], "off", tokens)
        gaps = []
        while not gen.done:
            gen.step()
            if 0 not in gen.logits:
                break
            logits = gen.logits[0].copy()                                   # (V,)
            logits[gen.suppress_ids] = -np.inf
            second, first = np.partition(logits, -2)[-2:]
            gaps.append(float(first - second))
        out.append(min(gaps, default=float("inf")))
    return out


def _decode_ms(bundle: Path, posts, tokens: int) -> float:
    from mmkp_edge.predictor import KeyphrasePredictor

    predictor = KeyphrasePredictor.from_bundle(bundle)
    decode_s, steps = 0.0, 0
    for post in posts:
        gen = predictor.generator([predictor.request(post, "off")], "off", tokens)
        gen.run()
        decode_s, steps = decode_s + gen.times.decode_s, steps + gen.times.steps - 1
    return 1000 * decode_s / max(1, steps)


@click.command()
@click.argument("fp32_bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--posts", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--posts-count", type=int, default=300, show_default=True)
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
@click.option("--time-posts", type=int, default=8, show_default=True, help="Posts timed at batch 1.")
@click.option("--new-tokens", type=int, default=48, show_default=True)
def main(fp32_bundle: str, posts: str, posts_count: int, variants: str, time_posts: int,
         new_tokens: int) -> None:
    """int8 variants of FP32_BUNDLE: agreement, bytes, decode ms/step (see module docstring)."""
    from export import ExportConfig, export_bundle
    from export.quantize import Int8Config
    from export.validate import ValidateConfig, agreement_of, rules, runtime_tokens

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise click.UsageError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    probe = [p.replace(image=None)                    # text-only: times the decoder, not vision
             for p in text_only_where_missing(read_posts(posts)[:posts_count])]
    checks = ValidateConfig(new_tokens=new_tokens, think="off", min_agreement=0.97)
    ref = Path(fp32_bundle)
    click.echo(f"fp32: greedy on {len(probe)} posts…", err=True)
    ref_preds, manifest = runtime_tokens(ref, probe, checks, batch_size=16)
    gold = [p.keyphrases for p in probe]
    click.echo("fp32: decision margins…", err=True)
    margins = _margins(ref, probe, new_tokens)
    clear = {m: [i for i, g in enumerate(margins) if g >= m] for m in MARGINS}

    def f1_at_1(preds) -> float:   # does a disagreement cost accuracy, or only flip near-ties?
        return round(100 * score(gold, [p.keyphrases for p in preds])["all"]["f1@1"], 2)

    rows = [{"variant": "fp32", "bytes": sum(f.stat().st_size for f in ref.iterdir()),
             "f1@1": f1_at_1(ref_preds),
             "decode_ms_per_step": round(_decode_ms(ref, probe[:time_posts], new_tokens), 2)}]
    with tempfile.TemporaryDirectory(prefix="int8-study-") as tmp:
        for name in names:
            out = Path(tmp) / name.replace(" ", "_").replace("+", "_")
            t0 = time.perf_counter()
            export_bundle(ExportConfig(source=str(ref), out=str(out), precision="int8",
                                       validate=False, int8=Int8Config(**VARIANTS[name])))
            click.echo(f"{name}: derived in {time.perf_counter() - t0:.0f} s; agreement on "
                       f"{len(probe)} posts…", err=True)
            got, _ = runtime_tokens(out, probe, checks, batch_size=16)
            agree = agreement_of(ref_preds, got, rules(manifest, checks), checks.min_agreement)
            # are the flips near-ties? agreement on the posts where fp32 decided by ≥ m logits
            by_margin = {f">={m:g}": {"posts": len(idx), "keyphrase_agreement": round(agreement_of(
                [ref_preds[i] for i in idx], [got[i] for i in idx], rules(manifest, checks),
                checks.min_agreement)["keyphrase_agreement"], 4) if idx else None}
                for m, idx in clear.items()}
            rows.append({"variant": name, "bytes": sum(f.stat().st_size for f in out.iterdir()),
                         "keyphrase_agreement": round(agree["keyphrase_agreement"], 4),
                         "token_sequence_agreement": round(agree["token_sequence_agreement"], 4),
                         "agreement_by_fp32_margin": by_margin, "f1@1": f1_at_1(got),
                         "decode_ms_per_step": round(_decode_ms(out, probe[:time_posts], new_tokens), 2)})
            click.echo(json.dumps(rows[-1]), err=True)
    fp32_bytes = rows[0]["bytes"]
    click.echo(f"{'variant':<16}{'F1@1':>7}{'agree kp':>9}{'agree tok':>10}{'MB':>8}{'× fp32':>8}"
               f"{'ms/step':>9}")
    for r in rows:
        click.echo(f"{r['variant']:<16}{r['f1@1']:>7.2f}{r.get('keyphrase_agreement', 1.0):>9.3f}"
                   f"{r.get('token_sequence_agreement', 1.0):>10.3f}{r['bytes'] / 1e6:>8.1f}"
                   f"{r['bytes'] / fp32_bytes:>8.3f}{r['decode_ms_per_step']:>9.2f}")
    for m, idx in clear.items():
        click.echo(f"fp32 decided every step by >= {m:g} logits on {len(idx)} of {len(probe)} posts; "
                   "agreement there: " + ", ".join(
                       f"{r['variant']} {r['agreement_by_fp32_margin'][f'>={m:g}']['keyphrase_agreement']}"
                       for r in rows[1:]))
    click.echo(json.dumps({"study": "int8", "posts": len(probe), "new_tokens": new_tokens,
                           "fp32_margins": [round(g, 3) for g in margins], "rows": rows}))


if __name__ == "__main__":
    main()
