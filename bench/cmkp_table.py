"""The real-CMKP table: trained stages next to two trivial baselines and CMKP's published model,
all scored by the one CMKP-exact scorer (`mmkp_edge.metrics`) on the same test posts.

Baselines (what a number has to beat to mean anything):
- `frequent`: the 5 most frequent training keyphrases, the same list for every post;
- `copy`: n-grams (n ≤ 3) of the post text and OCR that are training keyphrases, most frequent
  first, then the post's first content words (a keyphrase copied from the post).
A stage row comes from its run dir's `metrics.json` (the stage evaluated the same posts).

    python -m bench.cmkp_table --train runs/cmkp/valid.jsonl --max-train 2000 \\
        --test runs/cmkp/test.jsonl --max-test 300 runs/zero_shot/smollm2 runs/sft/smollm2
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from mmkp_edge.metrics import cmkp_source, score
from mmkp_edge.phrases import content_words, stem_key
from mmkp_edge.posts import read_posts

PUBLISHED = {"f1@1": 0.4713, "f1@3": 0.33224, "map@5": 0.52261}   # CMKP's cmkp_best_pred.txt


def frequent(train_kps: Counter, k: int = 5) -> list[str]:
    return [kp for kp, _ in train_kps.most_common(k)]


def copied(text: str, train_kps: dict[str, tuple[int, str]], k: int = 5) -> list[str]:
    """Training keyphrases that occur in `text` (most frequent first), then its first content words."""
    words = text.lower().split()
    found: dict[str, int] = {}
    for n in (3, 2, 1):
        for i in range(len(words) - n + 1):
            key = stem_key(" ".join(words[i:i + n]))
            if key in train_kps and key not in found:
                found[key] = train_kps[key][0]
    out = [train_kps[key][1] for key, _ in sorted(found.items(), key=lambda kv: -kv[1])]
    out += [w for w in content_words(text) if w not in out]
    return out[:k]


def gold_answer_tokens(tokenizer_json: str, test_path: str, max_test: int) -> float:
    """Mean tokens of the gold direct target `<answer>kp1; kp2</answer>` (what a stopped SFT
    output costs: the prime `<answer>` is not generated, `</answer>` is), by the student's tokenizer."""
    from tokenizers import Tokenizer

    from mmkp_edge import prompt

    tok = Tokenizer.from_file(tokenizer_json)
    posts = read_posts(test_path)
    posts = posts[:max_test] if max_test else posts
    counts = [len(tok.encode(prompt.direct_target(p.keyphrases)[len(prompt.ANSWER_OPEN):],
                             add_special_tokens=False).ids) for p in posts]
    return sum(counts) / len(counts)


def _row(name: str, scores: dict, extra: dict | None = None) -> dict:
    row = {"method": name}
    for subset in ("all", "present", "absent", "seen", "unseen", "strict"):
        if subset in scores:
            row[subset] = {m: round(100 * scores[subset][m], 2) for m in ("f1@1", "f1@3", "map@5")}
    return {**row, **(extra or {})}


def build(train_path: str, test_path: str, max_test: int, run_dirs: list[str],
          max_train: int = 0) -> list[dict]:
    train, test = read_posts(train_path), read_posts(test_path)
    train = train[:max_train] if max_train else train        # what the runs trained on: "seen"
    test = test[:max_test] if max_test else test
    counts = Counter(kp.lower() for p in train for kp in p.keyphrases)
    by_stem: dict[str, tuple[int, str]] = {}
    for kp, n in counts.items():
        key = stem_key(kp)
        if key not in by_stem or by_stem[key][0] < n:
            by_stem[key] = (n, kp)
    gold = [p.keyphrases for p in test]
    sources = [cmkp_source(p.text, p.ocr) for p in test]
    seen = list(counts)

    def scored(preds):
        return score(gold, preds, sources=sources, train_keyphrases=seen)

    top = frequent(counts)
    rows = [_row("frequent (top-5 training keyphrases)", scored([top] * len(test))),
            _row("copy (training keyphrases found in the post)",
                 scored([copied(f"{p.text} {p.ocr}", by_stem) for p in test]))]
    ids = [p.id for p in test]
    for run in run_dirs:
        metrics = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
        preds = {}
        for line in (Path(run) / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            preds[rec["id"]] = rec
        missing = [i for i in ids if i not in preds]
        if missing:
            raise click.ClickException(f"{run}: evaluated other posts (e.g. {missing[0]} missing); "
                                       f"use the same --test and --max-test as the run")
        recs = [preds[i] for i in ids]
        n = len(recs)
        train_info = metrics.get("train") or {}
        rows.append(_row(f"{metrics['stage']} ({Path(run).name})", scored([r["keyphrases"] for r in recs]), {
            "think_rate": round(sum(r["thought"] for r in recs) / n, 3),
            "tokens_per_post": round(sum(r["n_tokens"] for r in recs) / n, 1),
            "closed_rate": round(sum("</answer>" in r["text"] for r in recs) / n, 3),
            "train_wall_min": round((train_info.get("wall_s") or 0) / 60, 1),
            "train_tokens_per_s": train_info.get("tokens_per_s"),
            "train_posts": train_info.get("n_posts")}))
    return rows


@click.command()
@click.option("--train", "train_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training posts (the seen set and the baselines' source).")
@click.option("--test", "test_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--max-test", type=int, default=0, help="Score the first N test posts (0 = all).")
@click.option("--max-train", type=int, default=0,
              help="The runs trained on the first N training posts (0 = all): the seen set and "
                   "the baselines' source.")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A student's tokenizer.json: also report the gold answers' length in tokens.")
@click.argument("run_dirs", nargs=-1)
def main(train_path: str, test_path: str, max_test: int, max_train: int, tokenizer: str | None,
         run_dirs: tuple[str, ...]) -> None:
    """Print the real-CMKP table (Markdown) and end with one JSON line."""
    rows = build(train_path, test_path, max_test, list(run_dirs), max_train)
    gold_tokens = gold_answer_tokens(tokenizer, test_path, max_test) if tokenizer else None
    click.echo("| method | F1@1 | F1@3 | MAP@5 | present F1@1 | absent F1@1 | seen F1@1 | unseen F1@1 "
               "| strict F1@3 | think | tok/post | closed |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|---|---|")
    click.echo(f"| CMKP published (all 5,372 test posts) | {100 * PUBLISHED['f1@1']:.2f} | "
               f"{100 * PUBLISHED['f1@3']:.2f} | {100 * PUBLISHED['map@5']:.2f} | | | | | | | | |")
    for r in rows:
        a = r["all"]
        click.echo(f"| {r['method']} | {a['f1@1']} | {a['f1@3']} | {a['map@5']} | "
                   f"{r['present']['f1@1']} | {r['absent']['f1@1']} | {r['seen']['f1@1']} | "
                   f"{r['unseen']['f1@1']} | {r['strict']['f1@3']} | {r.get('think_rate', '')} | "
                   f"{r.get('tokens_per_post', '')} | {r.get('closed_rate', '')} |")
    if gold_tokens is not None:
        click.echo(f"gold answers: {gold_tokens:.1f} tokens per post (`<answer>…</answer>`)")
    click.echo(json.dumps({"table": "cmkp", "test_posts": max_test or "all",
                           "train_posts": max_train or "all",
                           "gold_answer_tokens": gold_tokens, "rows": rows}))


if __name__ == "__main__":
    main()
