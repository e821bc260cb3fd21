"""Qwen2-VL-2B-Instruct's shape through the whole runtime: random weights → fp32 and int8 bundles →
bytes on disk, decode ms/step and time to first token with one image, offline.

Speed and size depend on shapes, not on what the weights learned, so this builds a random
Qwen2VLForConditionalGeneration (train.tiny, family qwen2_vl) at Qwen2-VL-2B-Instruct's widths and
exports it exactly as `mmkp-export [--int8]` does. The numbers are Qwen/Qwen2-VL-2B-Instruct's
`config.json` and `preprocessor_config.json` on the Hugging Face hub as published (written from
the model card's files, not downloaded here):

    text   hidden_size 1536, intermediate_size 8960, num_hidden_layers 28, num_attention_heads 12,
           num_key_value_heads 2 (head_dim 128), vocab_size 151936, max_position_embeddings 32768,
           rope_theta 1e6, mrope_section [16, 24, 24], tie_word_embeddings true      (config.json)
    vision depth 32, embed_dim 1280, num_heads 16, mlp_ratio 4, patch_size 14,
           spatial_merge_size 2, temporal_patch_size 2, hidden_size 1536 (merger output)
                                                                  (config.json "vision_config")
    image  min_pixels 3136 (56²), max_pixels 12845056 (3584²)       (preprocessor_config.json)

The full model (2.2 B parameters, ~9 GB fp32 before export copies) does not fit beside a training
job on a 24 GB machine, so `--layers` and `--vision-depth` build a reduced-depth model of the same
widths: per-layer costs (decoder ms/step grows ~linearly in layers, plus the fixed 151936-row
lm_head) can be read off two depths. The tokenizer is train.tiny's small BPE (its ids are the first
rows of the padded vocabulary); greedy text is noise, so every row runs its whole token budget.

    python -m bench.qwen2_vl_shape OUT --layers 2 --vision-depth 2 [--int8/--no-int8] [--validate]

prints a table, then one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import click

from mmkp_edge.graph_io import DECODER, EMBED, VISION

QWEN2_VL_2B = dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                   num_kv_heads=2, model_vocab_size=151_936, max_positions=32_768,
                   rope_theta=1e6, mrope_section=(16, 24, 24), tie_embeddings=True,
                   vision_layers=32, vision_hidden_size=1280, vision_intermediate_size=1280 * 4,
                   vision_heads=16, patch_size=14, scale_factor=2, vision_out_size=1536,
                   image_size=3584, std=0.02)
IMAGE_SIDE = 448          # the timed image: 448×448 px → 32×32 patches → 256 image tokens


def shape_config(layers: int, vision_depth: int, seed: int = 0):
    from train.tiny import TinyConfig

    return dataclasses.replace(TinyConfig(seed=seed, **QWEN2_VL_2B), num_layers=layers,
                               vision_layers=vision_depth).validate()


def bundle_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def time_bundle(bundle: Path, image, text: str, new_tokens: int, repeats: int,
                threads: int | None) -> dict:
    """TTFT (preprocess + encode + vision + prefill → first token) and decode ms/step, batch 1,
    one image; medians over `repeats` after one warm-up."""
    from mmkp_edge.predictor import KeyphrasePredictor
    from mmkp_edge.query import Query

    predictor = KeyphrasePredictor.from_bundle(bundle, threads=threads)
    ttft, steps, vision, prompt_tokens = [], [], [], 0
    for run in range(repeats + 1):
        t0 = time.perf_counter()
        request = predictor.request(Query(text, image), max_new_tokens=new_tokens)
        gen = predictor.generator([request], max_new_tokens=new_tokens, stops=False)
        gen.step()
        t1 = time.perf_counter()
        while not gen.done:
            gen.step()
        t2 = time.perf_counter()
        if run:                                                  # run 0 warms the sessions up
            ttft.append(t1 - t0)
            steps.append((t2 - t1) / max(1, gen.times.steps - 1))
            vision.append(gen.times.vision_s)
        prompt_tokens = len(request.input_ids)
    return {"ttft_ms": round(1e3 * statistics.median(ttft), 1),
            "decode_ms_per_step": round(1e3 * statistics.median(steps), 2),
            "vision_ms": round(1e3 * statistics.median(vision), 1),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats}


def run(out: Path, layers: int, vision_depth: int, int8: bool, validate: bool, new_tokens: int,
        repeats: int, threads: int | None, say=print) -> dict:
    import numpy as np
    from PIL import Image

    from export import ExportConfig, export_bundle
    from train.tiny import init_tiny

    cfg = shape_config(layers, vision_depth)
    out.mkdir(parents=True, exist_ok=True)
    say(f"building a random Qwen2-VL: {layers} of 28 text layers, {vision_depth} of 32 vision blocks")
    student = init_tiny(out / "student", cfg, family="qwen2_vl")
    image = Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
    text = "Storm hits the city tonight, stay safe everyone"
    results = {}
    for precision in ("fp32", "int8") if int8 else ("fp32",):
        # int8 is traced from the checkpoint again (deriving needs a validated fp32 bundle) and
        # never gated: agreement between random-weight bundles measures chaos, not int8
        t0 = time.perf_counter()
        report = export_bundle(ExportConfig(source=str(student), out=str(out / precision),
                                            precision=precision, overwrite=True,
                                            validate=validate and precision == "fp32"),
                               progress=lambda m: say(f"  {precision}: {m}"))
        files = bundle_bytes(out / precision)
        results[precision] = {
            "export_s": round(time.perf_counter() - t0, 1), "validation": report.status,
            "mb": round(sum(files.values()) / 1e6, 1),
            "graph_mb": {g: round(sum(b for n, b in files.items() if n.startswith(g)) / 1e6, 1)
                         for g in (VISION, EMBED, DECODER)},
            **time_bundle(out / precision, image, text, new_tokens, repeats, threads)}
        say(f"  {precision}: {results[precision]}")
    return {"bench": "qwen2_vl_shape", "shape": "Qwen2-VL-2B-Instruct widths",
            "text_layers": layers, "vision_depth": vision_depth, "full_depth": [28, 32],
            "image_px": [IMAGE_SIDE, IMAGE_SIDE], "threads": threads, "results": results}


def table(report: dict) -> str:
    rows = [("precision", "MB", "decoder MB", "vision MB", "decode ms/step", "TTFT ms", "vision ms")]
    for name, r in report["results"].items():
        g = r["graph_mb"]
        rows.append((name, f"{r['mb']:.0f}", f"{g[DECODER]:.0f}", f"{g[VISION]:.0f}", f"{r['decode_ms_per_step']:.1f}",
                     f"{r['ttft_ms']:.0f}", f"{r['vision_ms']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", type=click.IntRange(1, 28), default=2, show_default=True,
              help="Text decoder layers (Qwen2-VL-2B has 28).")
@click.option("--vision-depth", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Vision blocks (Qwen2-VL-2B has 32).")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also derive the int8 bundle.")
@click.option("--validate", is_flag=True, help="Run export's fp32 parity checks (slower).")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Decode steps timed.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs (median).")
@click.option("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's).")
def main(out: Path, layers: int, vision_depth: int, int8: bool, validate: bool, new_tokens: int,
         repeats: int, threads: int | None) -> None:
    """Qwen2-VL-2B-shaped random bundles: sizes, decode ms/step, TTFT with one image."""
    report = run(out, layers, vision_depth, int8, validate, new_tokens, repeats, threads,
                 say=lambda m: click.echo(m, err=True))
    click.echo(table(report))
    click.echo(json.dumps(report))


if __name__ == "__main__":
    main()
