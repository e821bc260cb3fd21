"""`mmkp-export`: a trained student → a validated ONNX bundle for the torch-free runtime.

Thin: parse the flags into an ExportConfig, call export.exporter.export_bundle (or, with --mlx,
export.mlx_export.export_mlx), print a summary (or, with --json, the report as one JSON object on
stdout). Progress goes to stderr, one line per step. Exit codes: 0 bundle written and validated
(or --no-validate), 1 bundle written but its validation failed (the manifest says so), 2 a usage
error (nothing written).
"""

from __future__ import annotations

import json

import click

from mmkp_edge.cli import entry

from .exporter import ExportConfig, ExportReport, export_bundle
from .quantize import Int8Config
from .validate import ValidateConfig


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def summary(report: ExportReport) -> str:
    """People's view of the report: files and sizes, then the parity figures."""
    lines = [f"bundle   {report.bundle}  ({report.precision}, {_size(report.total_bytes)}, "
             f"{report.wall_seconds:.1f} s)"]
    for name, size in report.files.items():
        lines.append(f"  {size:>12,d}  {name}")
    v = report.validation
    for key in ("logits", "greedy", "agreement"):
        if "error" in v.get(key, {}):
            lines.append(f"{key:<8} error: {v[key]['error']}")
    if "max_abs_diff" in v.get("logits", {}):
        diffs = v["logits"]["max_abs_diff"]
        lines.append("parity   max |ORT - torch|: " + ", ".join(f"{k} {d:.2e}" for k, d in diffs.items())
                     + f"  (allowed: {v['logits']['rtol']:g} × max |value|)")
    if "identical" in v.get("greedy", {}):
        g = v["greedy"]
        lines.append(f"greedy   {g['identical']}/{g['posts']} posts identical to torch "
                     f"({g['with_image']} with an image, {g['new_tokens']} new tokens, left-padded)")
    if "keyphrase_agreement" in v.get("agreement", {}):
        a = v["agreement"]
        lines.append(f"agree    {report.precision} vs fp32 keyphrases {a['keyphrase_agreement']:.3f} "
                     f"on {a['posts']} posts "
                     f"(tokens {a['token_sequence_agreement']:.3f}; gate {a['min_agreement']:g})")
    lines.append(f"status   {report.status}")
    return "\n".join(lines)


def agreement_hint(report: ExportReport) -> str | None:
    """Why an int8 / fp16 bundle failed its agreement gate, and the way out — or None when the gate
    is not what failed. Random weights are the usual cause: their logits are nearly flat, so the
    rounding of int8 weights flips greedy tokens and the paths diverge, which no export setting
    fixes."""
    agreement = report.validation.get("agreement", {})
    if agreement.get("passed", True) or "keyphrase_agreement" not in agreement:
        return None
    return (f"{report.precision} keyphrases match fp32 on {agreement['keyphrase_agreement']:.0%} of "
            f"{agreement['posts']} probe posts (gate {agreement['min_agreement']:g}). An untrained, "
            "random-weight student cannot pass this gate (its near-flat logits let int8 rounding "
            "flip greedy tokens); train it first, or export anyway with --min-agreement 0 "
            "(the bundle is then served without a quality check).")


@click.command("mmkp-export")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Bundle folder to create.")
@click.option("--int8", is_flag=True,
              help="Weight-only int8 MatMulNBits bundle (CPU), gated on agreement with fp32.")
@click.option("--fp16", is_flag=True, help="float16 bundle (for CUDA), gated like --int8.")
@click.option("--mlx", is_flag=True,
              help="MLX bundle for Apple silicon (mlx-vlm checkpoint + manifest; export/mlx_export.py).")
@click.option("--q-bits", type=click.Choice(["8", "4"]), default=None,
              help="With --mlx: quantize the language model's weights to 8 or 4 bits.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Check ORT vs torch logits and greedy tokens right after export.")
@click.option("--min-agreement", type=float, default=ValidateConfig.min_agreement,
              show_default=True, help="Quantized-bundle gate: share of probe posts with fp32's keyphrases.")
@click.option("--block-size", type=click.Choice(["16", "32", "64"]), default="32", show_default=True,
              help="int8 weights per scale.")
@click.option("--asymmetric", is_flag=True,
              help="With --int8: a zero point per block as well as a scale (finer rounding; with "
                   "--block-size 16 the closest int8 setting to fp32 measured on the real student).")
@click.option("--new-tokens", type=int, default=ValidateConfig.new_tokens, show_default=True,
              help="Greedy tokens compared per probe post.")
@click.option("--fp32-head", is_flag=True,
              help="With --int8: keep lm_head (the logits MatMul) in float32.")
@click.option("--fp32-embeddings", is_flag=True,
              help="With --int8: keep the embedding table in float32 (default: int8 rows).")
@click.option("--fp32-matmuls", default="", metavar="NAMES",
              help="With --int8: keep the decoder MatMuls whose weight name contains one of these "
                   "comma-separated parts in float32 (fused decoder names: qkv_proj, o_proj, "
                   "gate_up_proj, down_proj).")
@click.option("--probe", "probe_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Agreement gate on the first --probe-posts posts of this JSONL / CMKP file "
                   "[default: synthetic probe posts].")
@click.option("--probe-posts", type=int, default=ValidateConfig.agreement_posts, show_default=True,
              help="Posts in the int8 / fp16 agreement gate.")
@click.option("--decoder", type=click.Choice(["auto", "fused", "traced"]), default="auto",
              show_default=True,
              help="Decoder graph: fused onnxruntime ops (GroupQueryAttention, RotaryEmbedding, "
                   "SkipSimplifiedLayerNormalization; Llama text models) or traced by torch.onnx; "
                   "auto = fused where the model allows, for fp32 and int8 (fp16 bundles, meant "
                   "for CUDA, stay traced: the fused graph is checked on CPU only).")
@click.option("--stage", default=None, help="Training stage to record [default: from the run dir].")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def cli(source: str, out: str, int8: bool, fp16: bool, mlx: bool, q_bits: str | None, validate: bool,
        min_agreement: float, block_size: str, asymmetric: bool, new_tokens: int, fp32_head: bool,
        fp32_embeddings: bool, fp32_matmuls: str, probe_file: str | None,
        probe_posts: int, decoder: str, stage: str | None, overwrite: bool, as_json: bool) -> int:
    """Export the student at SOURCE (hub id, checkpoint folder, or run dir with merged/ or
    adapter/) as an ONNX bundle for mmkp-predict. With --int8/--fp16, SOURCE may also be a
    validated fp32 bundle: its graphs are converted without re-tracing.

    \b
    Examples:
      mmkp-export runs/dynamic_cot/demo -o bundles/demo
      mmkp-export runs/dynamic_cot/demo -o bundles/demo-int8 --int8
      mmkp-export bundles/demo -o bundles/demo-int8 --int8      # from the fp32 bundle
      mmkp-export bundles/demo -o bundles/demo-b16 --int8 --block-size 16 --asymmetric
      mmkp-export runs/dynamic_cot/demo -o bundles/demo-mlx --mlx --q-bits 8
      mmkp-export HuggingFaceTB/SmolVLM-256M-Instruct -o bundles/zs --no-validate --json
    """
    if int8 + fp16 + mlx > 1:
        raise click.UsageError("choose one of --int8, --fp16 and --mlx")
    if q_bits and not mlx:
        raise click.UsageError("--q-bits goes with --mlx (ONNX int8 is --int8)")
    if probe_posts < 2:
        raise click.UsageError("--probe-posts must be at least 2")
    checks = ValidateConfig(min_agreement=min_agreement, new_tokens=new_tokens,
                            agreement_posts=probe_posts, probe_file=probe_file)
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    if mlx:
        from .mlx_export import MlxExportConfig, export_mlx
        report = export_mlx(MlxExportConfig(source=source, out=out, q_bits=int(q_bits) if q_bits else None,
                                            overwrite=overwrite, validate=validate, stage=stage,
                                            checks=checks), progress=say)
    else:
        precision = "int8" if int8 else "fp16" if fp16 else "fp32"
        report = export_bundle(ExportConfig(source=source, out=out, precision=precision,
                                            overwrite=overwrite, validate=validate, stage=stage,
                                            decoder=decoder,
                                            int8=Int8Config(block_size=int(block_size), symmetric=not asymmetric,
                                                            keep_lm_head=fp32_head,
                                                            keep_embeddings=fp32_embeddings,
                                                            keep_matmuls=tuple(
                                                                m.strip() for m in fp32_matmuls.split(",")
                                                                if m.strip())),
                                            checks=checks), progress=say)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(summary(report))
    if not report.ok:
        click.echo(f"mmkp-export: validation failed; {report.bundle} is marked invalid in its "
                   "manifest", err=True)
        hint = agreement_hint(report)
        if hint:
            click.echo(f"mmkp-export: {hint}", err=True)
        return 1
    return 0


main = entry(cli, "mmkp-export")

if __name__ == "__main__":
    main()
