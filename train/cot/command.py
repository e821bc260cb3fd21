"""`mmkp-train cot-data`: the thin command over run.run_cot_data (parse → config → one call).

The common knobs are flags; every CotDataConfig field can also come from a YAML recipe (`--config`)
or `--set key=value` (train.config_loader: defaults ← recipe ← flags ← --set), so the command stays short
and the config dataclass stays the one documented list of options. Flags default to None so a
recipe's values are not silently overridden by a flag nobody typed.
The summary is printed for people on stderr and as one JSON line on stdout for machines.
"""

from __future__ import annotations

import click

from mmkp_edge.cli import entry

from .config import CotDataConfig
from .filter import KEEP_POLICIES
from .teachers import available

_DEFAULTS = CotDataConfig()


def _default(name: str) -> str:
    return f"[default: {getattr(_DEFAULTS, name)}]"


@click.command("cot-data", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "recipe", type=click.Path(dir_okay=False, exists=True), default=None,
              help="YAML recipe of CotDataConfig fields (flags and --set override it).")
@click.option("--posts", type=click.Path(dir_okay=False), default=None,
              help="Training posts (JSONL, or a CMKP *_src.txt file).  [required]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Rationale JSONL; appended to, ids already in it are skipped.  [required]")
@click.option("--teacher", type=click.Choice(available()), default=None, help=_default("teacher"))
@click.option("--model", default=None, help="Model name on the server, or a hub id / local path "
              f"for --teacher local.  {_default('model')}")
@click.option("--base-url", default=None, help="OpenAI-compatible server root (vLLM: "
              f"http://HOST:8000/v1).  {_default('base_url')}")
@click.option("--api-key-env", default=None, help="Environment variable holding the API key "
              f"('' = send none).  {_default('api_key_env')}")
@click.option("--no-gold", "no_gold", is_flag=True, default=None,
              help="Prediction mode: the teacher does not see the gold keyphrases.")
@click.option("--keep", type=click.Choice(KEEP_POLICIES), default=None,
              help="Keep a rationale when its answer equals the gold set / has the top gold "
                   f"keyphrase / has any gold keyphrase (stemmed).  {_default('keep')}")
@click.option("--samples", type=int, default=None,
              help="Replies drawn per post until one passes (needs --set temperature=0.7).")
@click.option("--concurrency", type=int, default=None,
              help=f"Requests in flight (openai).  {_default('concurrency')}")
@click.option("--limit", type=int, default=None, help="Only the first N posts (a trial run).")
@click.option("--retry-failed", is_flag=True, default=None,
              help="Re-ask posts whose last request failed.")
@click.option("--price-in", type=float, default=None,
              help="USD per 1M prompt tokens (cost estimate).")
@click.option("--price-out", type=float, default=None, help="USD per 1M completion tokens.")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Folder where relative image paths are looked up.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other config field: timeout, retries, backoff_base, backoff_max, "
                   "temperature, max_tokens, keep_all_samples, image_max_side, "
                   "max_consecutive_failures, batch_size, device (train/cot/config.py).")
def cot_data_command(recipe, posts, output, teacher, model, base_url, api_key_env, no_gold, keep,
                     samples, concurrency, limit, retry_failed, price_in, price_out, image_root,
                     sets):
    """Write teacher rationales for Fine-tune-CoT, keeping those whose answer matches the gold.

    Resumable: re-running the same command continues where it stopped.

    \b
    Examples:
      OPENAI_API_KEY=sk-… mmkp-train cot-data --posts train.jsonl -o rationales.jsonl \\
          --model gpt-4o --price-in 2.5 --price-out 10
      mmkp-train cot-data --posts train.jsonl -o rationales.jsonl --api-key-env '' \\
          --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 32
      mmkp-train cot-data --posts train.jsonl -o rationales.jsonl --teacher local \\
          --model HuggingFaceTB/SmolVLM-500M-Instruct --set batch_size=16
    """
    from .. import config_loader
    from .run import run_cot_data, summary_json   # heavy-ish imports only when the command runs

    config = config_loader.load(CotDataConfig, recipe, sets, posts=posts, output=output,
                          teacher=teacher, model=model, base_url=base_url,
                          api_key_env=api_key_env, gold=False if no_gold else None, keep=keep,
                          samples=samples, concurrency=concurrency, limit=limit,
                          retry_failed=retry_failed, price_in=price_in, price_out=price_out,
                          image_root=image_root)
    summary = run_cot_data(config)
    click.echo(summary_json(summary))
    return 0


main = entry(cot_data_command, "mmkp-train cot-data")

if __name__ == "__main__":
    main()
