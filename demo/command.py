"""`mmkp-train demo`: run the one-command demo and print what each stage achieved."""

from __future__ import annotations

import json

import click

from train import config_loader

from .run import DemoConfig, run_demo

_SUBSETS = ("all", "present", "absent", "unseen")


def _pct(result: dict, subset: str, key: str) -> str:
    value = result["scores"].get(subset, {}).get(key)
    return "-" if value is None else f"{100 * value:.1f}"


def stage_table(stages: list[dict]) -> str:
    """Per stage: F1@1 / F1@3 / MAP@5 for all, present, absent and unseen keyphrases; think rate;
    generated tokens per post."""
    header = ["stage", "think"]
    for subset in _SUBSETS:
        header += [f"{subset} F1@1", "F1@3", "MAP@5"]
    header += ["think rate", "tok/post"]
    rows = [header]
    for r in stages:
        row = [r["stage"], r["think"]]
        for subset in _SUBSETS:
            row += [_pct(r, subset, "f1@1"), _pct(r, subset, "f1@3"), _pct(r, subset, "map@5")]
        row += [f"{r['think_rate']:.2f}", f"{r['tokens_per_post']:.1f}"]
        rows.append(row)
    widths = [max(len(row[j]) for row in rows) for j in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths))) for row in rows)


def summary_text(summary: dict) -> str:
    lines = ["", "Scores on the demo test split (percent):", stage_table(summary["stages"]), ""]
    cot = summary["cot_data"]
    lines.append(f"demo teacher: {cot['kept']} of {cot['processed']} rationales kept by the exact "
                 f"answer filter ({100 * cot['kept_rate']:.0f}%)")
    bundle = summary["bundle"]
    lines.append(f"int8 bundle: {bundle['bytes'] / 1e6:.2f} MB at {bundle['path']}")
    for p in summary["predictions"]:
        lines.append(f"predict {p['id']}: {'; '.join(p['predicted']) or '(none)'}   "
                     f"[gold: {'; '.join(p['gold'])}; thought: {p['thought']}; "
                     f"{p['latency_ms']:.0f} ms]")
    t = summary["times"]
    lines.append("time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in t.items()))
    return "\n".join(lines)


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, help="Folder for everything written.")
@click.option("--posts", "n_posts", type=int, help="Synthetic posts over all splits (default 3000).")
@click.option("--steps", type=int, help="Training steps per trained stage.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any DemoConfig field, e.g. --set eval_posts=100.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo_command(out: str, n_posts: int | None, steps: int | None, overrides: tuple[str, ...],
                 as_json: bool) -> None:
    """Synthetic posts → zero_shot → sft → cot-data → cot → dynamic_cot → int8 bundle → predict.

    Runs offline on CPU in minutes with a tiny random-init student; the `demo` teacher stands in
    for a real teacher by writing rationales from the generator's ground truth.

    \b
    Example:
      mmkp-train demo --out runs/demo
      mmkp-train demo --posts 600 --steps 100 --set eval_posts=60   # a quick smoke run
    """
    cfg = config_loader.load(DemoConfig, None, overrides, out=out, n_posts=n_posts, steps=steps)
    summary = run_demo(cfg)
    click.echo(json.dumps(summary, default=str) if as_json else summary_text(summary))
