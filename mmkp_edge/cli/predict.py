"""`mmkp-predict`: keyphrases for a post (or a JSONL stream of posts) from an exported bundle.

Thin by design: parse flags, load the bundle once, call KeyphrasePredictor, print. Exit codes:
0 every item answered, 1 some items failed (each with its error in the output), 2 usage errors.
A post cut to fit the model's context is answered (`truncated: true`) with a note on stderr.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from ..bundle import BUNDLE_ENV
from ..images import BAD_IMAGE_POLICIES
from ..predictor import KeyphrasePredictor, Prediction
from ..prompt import KEYPHRASE_SEP, THINK_MODES
from ..query import Query, read_queries
from . import entry

EPILOG = f"""\b
Examples:
  mmkp-predict --bundle bundle/ photo.jpg "storm over the city tonight"
  mmkp-predict --no-image "new personal best at the marathon" --think off --json
  mmkp-predict --jsonl posts.jsonl -o predictions.jsonl --batch-size 16
\b
JSONL lines: {{"id": "p1", "text": "...", "image": "img/p1.jpg", "ocr": "..."}} (image relative to the
file, or --image-root). The bundle defaults to ${BUNDLE_ENV}.
"""


class _Progress:
    """`N posts, M failed` on stderr: rewritten in place on a terminal, every 100 posts otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.done = self.failed = 0

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.enabled and self.tty:
            click.echo(f"\rmmkp-predict: {self.done} posts, {self.failed} failed", err=True, nl=False)
        elif self.enabled and self.done % 100 == 0:
            click.echo(f"mmkp-predict: {self.done} posts, {self.failed} failed", err=True)

    def close(self) -> None:
        if self.enabled:
            prefix = "\r" if self.tty else ""
            click.echo(f"{prefix}mmkp-predict: {self.done} posts, {self.failed} failed, done", err=True)


def _note_truncated(pred: Prediction) -> None:
    if pred.truncated:
        click.echo(f"mmkp-predict: note: {pred.id}: the post was too long for the model's context; "
                   "answered from its beginning (truncated: true)", err=True)


def _run_jsonl(predictor: KeyphrasePredictor, source: str, output: str | None, image_root: str | None,
               options: dict, quiet: bool) -> int:
    progress = _Progress(enabled=not quiet)
    sink = open(output, "w", encoding="utf-8") if output else nullcontext(sys.stdout)
    with sink as fh:
        for pred in predictor.stream(read_queries(source, image_root), **options):
            fh.write(json.dumps(pred.to_json(), ensure_ascii=False) + "\n")
            fh.flush()
            _note_truncated(pred)
            progress.update(pred.error is not None)
    progress.close()
    return 1 if progress.failed else 0


def _show(pred: Prediction, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps(pred.to_json(), ensure_ascii=False))
    elif pred.error is None:
        click.echo(KEYPHRASE_SEP.join(pred.keyphrases))
    if pred.error is not None:
        click.echo(f"mmkp-predict: error: {pred.error}", err=True)
        return 1
    if pred.warning:
        click.echo(f"mmkp-predict: warning: {pred.warning}", err=True)
    _note_truncated(pred)
    return 0


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, metavar="[IMAGE] [TEXT]")
@click.option("--no-image", is_flag=True, help="Text-only post: the one argument is the text.")
@click.option("--jsonl", "jsonl", type=str, default=None, metavar="IN",
              help="Predict for every post of a JSONL file ('-' = stdin), in input order.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="With --jsonl: write predictions here instead of stdout.")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="With --jsonl: folder that image paths are relative to.")
@click.option("--bundle", type=click.Path(file_okay=False), default=None, envvar=BUNDLE_ENV,
              help=f"Exported bundle folder (default: ${BUNDLE_ENV}).")
@click.option("--think", type=click.Choice(THINK_MODES), default="auto", show_default=True,
              help="off: answer directly; on: reason first; auto: the model decides.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=96, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="ORT intra-op threads (0 = ORT default).")
@click.option("--providers", default="cpu", show_default=True,
              help="Execution providers: cpu, cuda or cuda,cpu.")
@click.option("--bad-image", type=click.Choice(BAD_IMAGE_POLICIES), default="error", show_default=True,
              help="A missing or unreadable image fails the post, or the post is answered from its text "
                   "(with a warning).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of the keyphrase line.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle files and the refusal of a bundle that "
              "failed export validation.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def cli(args, no_image, jsonl, output, image_root, bundle, think, batch_size, max_new_tokens, threads,
        providers, bad_image, as_json, no_verify, quiet):
    """Predict keyphrases (hashtags) for an image + text post with an exported student bundle.

    Prints the keyphrases on one line, '; '-separated (or JSON with --json).
    """
    if jsonl is not None and (args or no_image):
        raise click.UsageError("--jsonl takes no IMAGE/TEXT arguments")
    if jsonl is None:
        if not args:
            raise click.UsageError("give IMAGE [TEXT], --no-image TEXT, or --jsonl IN")
        if no_image and len(args) != 1:
            raise click.UsageError("--no-image takes exactly one argument: the text")
        if not no_image and len(args) > 2:
            raise click.UsageError("expected IMAGE [TEXT] (quote the text)")
        if output is not None:
            raise click.UsageError("-o/--output goes with --jsonl")
    if jsonl is not None and jsonl != "-" and not Path(jsonl).is_file():
        raise click.UsageError(f"--jsonl {jsonl}: file not found")
    predictor = KeyphrasePredictor.from_bundle(bundle, threads=threads or None, providers=providers,
                                               verify=not no_verify)
    options = {"think": think, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
               "bad_image": bad_image}
    if jsonl is not None:
        return _run_jsonl(predictor, jsonl, output, image_root, options, quiet)
    query = Query(text=args[0]) if no_image else Query(text=args[1] if len(args) > 1 else "",
                                                       image=args[0])
    return _show(next(predictor.stream([query], **options)), as_json)


main = entry(cli, "mmkp-predict")

if __name__ == "__main__":
    main()
