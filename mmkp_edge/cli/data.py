"""`mmkp-data`: convert datasets to posts JSONL, measure train/test overlap, de-duplicate, and re-split
with a chosen share of unseen test keyphrases (the paper's calibrated-benchmark idea). Each command
parses its flags, builds a config and calls one function of mmkp_edge.data; each writes a JSON
report next to its output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..data.convert import FORMATS, absolute_images, load_posts
from ..data.dedup import deduplicate
from ..data.neardup import NearDupConfig
from ..data.overlap import format_overlap, overlap_report
from ..data.report import report_path, write_report
from ..data.split import SPLITS, SplitConfig, parse_size, split_pool
from ..errors import InputError
from ..posts import write_jsonl
from . import entry


def _near_options(fn):
    fn = click.option("--threshold", type=float, default=NearDupConfig.threshold, show_default=True,
                      help="Near-duplicate threshold: Jaccard of character n-gram sets.")(fn)
    fn = click.option("--ngram", type=int, default=NearDupConfig.ngram, show_default=True,
                      help="Character n-gram size for near duplicates.")(fn)
    fn = click.option("--quiet", is_flag=True, help="No progress on stderr.")(fn)
    return fn


def _read(path: str, quiet: bool, **kwargs):
    posts = load_posts(path, **kwargs)
    if not quiet:
        click.echo(f"read {len(posts):,} posts from {path}", err=True)
    return posts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Dataset tools for calibrated keyphrase benchmarks.

    \b
    mmkp-data convert test_src.txt --ocr test_ocr_final.txt -o test.jsonl
    mmkp-data overlap --train valid_src.txt --test test_src.txt --json
    mmkp-data dedup test.jsonl train.jsonl -o dedup/
    mmkp-data split pool.jsonl --unseen-ratio 0.3 --test 0.1 --valid 0.1 -o splits/
    """


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output posts JSONL.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Input format (auto: by suffix, and for .json by its first record).")
@click.option("--ocr", type=click.Path(dir_okay=False), help="CMKP line-aligned OCR file.")
@click.option("--attributes", type=click.Path(dir_okay=False), help="CMKP line-aligned attribute file.")
@click.option("--image-root", type=click.Path(file_okay=False), help="Folder holding the images.")
@click.option("--text-pattern", help="LLaVA: regex with a 'text' group extracting the post from the "
                                      "human turn, e.g. 'Post: (?P<text>.*)'.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def convert(src, out, fmt, ocr, attributes, image_root, text_pattern, quiet) -> None:
    """Convert CMKP files or LLaVA/AimKP-style JSON to posts JSONL.

    \b
    mmkp-data convert test_src.txt --ocr test_ocr_final.txt --image-root imgs/ -o test.jsonl
    mmkp-data convert aimkp_train.json --image-root imgs/ -o train.jsonl
    """
    posts = absolute_images(_read(src, quiet, fmt=fmt, ocr=ocr, attributes=attributes,
                                  image_root=image_root, text_pattern=text_pattern))
    write_jsonl(posts, out)
    with_image = sum(p.image is not None for p in posts)
    report = {"source": str(src), "format": fmt, "output": str(out), "posts": len(posts),
              "posts_with_image": with_image,
              "posts_with_keyphrases": sum(bool(p.keyphrases) for p in posts),
              "keyphrase_instances": sum(len(p.keyphrases) for p in posts)}
    path = write_report(report_path(out, "convert"), "convert", report)
    if not quiet:
        click.echo(f"wrote {len(posts):,} posts to {out} ({with_image:,} with an image found); "
                   f"report {path}", err=True)
        if with_image < len(posts):
            click.echo(f"note: {len(posts) - with_image:,} posts are text-only (image not found; "
                       "pass --image-root)", err=True)


@cli.command()
@click.option("--train", "train_path", required=True, type=click.Path(dir_okay=False),
              help="Training posts (CMKP src, JSONL or JSON).")
@click.option("--test", "test_path", required=True, type=click.Path(dir_okay=False),
              help="Test posts.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--top", type=int, default=20, show_default=True, help="How many overlapping keyphrases to list.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@_near_options
def overlap(train_path, test_path, as_json, top, out, threshold, ngram, quiet) -> None:
    """How much TEST overlaps TRAIN: seen keyphrases, exact and near-duplicate posts.

    \b
    mmkp-data overlap --train valid_src.txt --test test_src.txt --json
    """
    cfg = NearDupConfig(ngram=ngram, threshold=threshold).validate()
    train, test = _read(train_path, quiet), _read(test_path, quiet)
    report = {"train": str(train_path), "test": str(test_path),
              **overlap_report(train, test, cfg, top=top, progress=not quiet)}
    if out:
        write_report(out, "overlap", report)
    click.echo(json.dumps(report, ensure_ascii=False) if as_json else format_overlap(report))


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the de-duplicated <name>.jsonl files and dedup.report.json.")
@click.option("--exact-only", is_flag=True, help="Skip near-duplicate detection.")
@_near_options
def dedup(inputs, out_dir, exact_only, threshold, ngram, quiet) -> None:
    """Drop exact and near-duplicate posts within and across INPUTS (earlier files win).

    Give the set to protect first: `dedup test.jsonl train.jsonl` removes train posts that
    duplicate test posts.

    \b
    mmkp-data dedup test_src.txt valid_src.txt -o dedup/
    """
    cfg = NearDupConfig(ngram=ngram, threshold=threshold).validate()
    names = [Path(p).stem for p in inputs]
    if len(set(names)) != len(names):
        raise InputError(f"input file names must differ (outputs are <name>.jsonl): {names}")
    start = time.perf_counter()
    sets = [(name, _read(path, quiet)) for name, path in zip(names, inputs)]
    result = deduplicate(sets, cfg, near=not exact_only, progress=not quiet)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, posts in result.kept.items():
        write_jsonl(posts, out / f"{name}.jsonl")
    report = {"inputs": list(inputs), "near_duplicates": not exact_only,
              **result.summary({name: len(posts) for name, posts in sets}),
              "seconds": round(time.perf_counter() - start, 2), "method": cfg.method(),
              "removed": [r.to_json() for r in result.removed]}
    path = write_report(out / "dedup.report.json", "dedup", report)
    click.echo(json.dumps({k: report[k] for k in ("sets", "removed_total")}))
    if not quiet:
        click.echo(f"wrote {out}/<name>.jsonl; every removal with its reason in {path}", err=True)


@cli.command()
@click.argument("pool", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for train/valid/test.jsonl and split.report.json.")
@click.option("--unseen-ratio", type=float, required=True,
              help="Share of test keyphrase instances unseen in train, e.g. 0.3.")
@click.option("--test", "test_size", default="0.1", show_default=True, help="Fraction or post count.")
@click.option("--valid", "valid_size", default="0.1", show_default=True, help="Fraction or post count.")
@click.option("--train", "train_size", default=None, help="Fraction or count [default: the rest].")
@click.option("--tolerance", type=float, default=SplitConfig.tolerance, show_default=True,
              help="Allowed |achieved - requested| unseen ratio; beyond it the command fails.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def split(pool, out_dir, unseen_ratio, test_size, valid_size, train_size, tolerance, seed,
          quiet) -> None:
    """Re-split POOL files into train/valid/test with a chosen unseen-keyphrase share in test.

    \b
    mmkp-data split train.jsonl valid.jsonl test.jsonl --unseen-ratio 0.3 -o calibrated/
    """
    cfg = SplitConfig(unseen_ratio=unseen_ratio, tolerance=tolerance, seed=seed,
                      test=parse_size(test_size, "test"), valid=parse_size(valid_size, "valid"),
                      train=None if train_size is None else parse_size(train_size, "train")).validate()
    start = time.perf_counter()
    posts = [p for path in pool for p in _read(path, quiet)]
    splits, report = split_pool(posts, cfg, progress=not quiet)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl(splits[name], out / f"{name}.jsonl")
    report = {"pool": list(pool), **report, "seconds": round(time.perf_counter() - start, 2)}
    path = write_report(out / "split.report.json", "split", report)
    click.echo(json.dumps({"sizes": report["sizes"], "achieved": report["achieved"]}))
    if not report["valid_within_tolerance"]:
        click.echo(f"warning: valid unseen ratio {report['achieved']['valid_unseen_instance_ratio']:.4f} "
                   f"is outside ±{tolerance} of {unseen_ratio} (test is within)", err=True)
    if not quiet:
        click.echo(f"wrote {out}/train|valid|test.jsonl; report {path}", err=True)


main = entry(cli, "mmkp-data")

if __name__ == "__main__":
    main()
