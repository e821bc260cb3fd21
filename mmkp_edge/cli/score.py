"""`mmkp-score GOLD PRED`: the CMKP-exact scorer on files (see mmkp_edge.metrics)."""

from __future__ import annotations

import json

import click

from ..metrics import cmkp_source, format_table, score
from ..posts import read_posts
from ..predictions import read_predictions
from . import entry

_FILE = click.Path(exists=True, dir_okay=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("gold", type=_FILE)
@click.argument("pred", type=_FILE)
@click.option("--ocr", type=_FILE, help="CMKP OCR side file: presence is judged on text + OCR.")
@click.option("--train-gold", "train_gold", type=_FILE, multiple=True,
              help="Training posts (CMKP or JSONL) for the seen/unseen split; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def cli(gold: str, pred: str, ocr: str | None, train_gold: tuple[str, ...], as_json: bool) -> None:
    """Score predicted keyphrases against gold posts, exactly like CMKP's evaluator.

    GOLD is a CMKP `text<sep>kp1;kp2<sep>url` file or a posts JSONL. PRED is one `kp1;kp2` line
    per post, or JSONL with `id` and `keyphrases` (or raw model `text`, parsed like the runtime).

    \b
    Example:
      mmkp-score ../shared/data/cmkp/test_src.txt ../shared/data/cmkp/cmkp_best_pred.txt \\
          --ocr ../shared/data/cmkp/test_ocr_final.txt --json
    """
    posts = read_posts(gold, ocr=ocr)
    predictions = read_predictions(pred, [p.id for p in posts])
    train = [kp for path in train_gold for p in read_posts(path) for kp in p.keyphrases]
    result = score([p.keyphrases for p in posts], predictions,
                   sources=[cmkp_source(p.text, p.ocr) for p in posts],
                   train_keyphrases=train if train_gold else None)
    click.echo(json.dumps(result, sort_keys=True) if as_json else format_table(result))


main = entry(cli, "mmkp-score")

if __name__ == "__main__":
    main()
