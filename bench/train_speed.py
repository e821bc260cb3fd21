"""Training throughput, fp32 vs bf16 autocast, on one student and real posts: tokens per second.

Each precision runs the same LoRA optimizer steps (forward, backward, AdamW) on the same batches
through the training loop's own pieces (`train.collate.train_batch`, `train.precision`), after one
untimed warm-up step; tokens are the non-pad input tokens the model processed. Prints a table and
ends with one JSON line. bf16 is skipped with a reason where the CPU lacks it.

    python -m bench.train_speed --student runs/smollm2-student --posts runs/cmkp/valid.jsonl \\
        --steps 6 --batch-size 8
"""

from __future__ import annotations

import json
import time

import click

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.posts import read_posts


def measure(student_dir: str, posts_path: str, steps: int, batch_size: int, precision: str,
            threads: int) -> dict:
    import torch

    from train.collate import train_batch
    from train.lora import apply_lora
    from train.precision import autocast, autocast_dtype
    from train.student import load_student

    if threads:
        torch.set_num_threads(threads)
    amp = autocast_dtype(precision, "cpu")
    student = load_student(student_dir)
    torch.manual_seed(0)
    model = apply_lora(student.model, student.family, tokenizer=student.processor.tokenizer).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    posts = read_posts(posts_path)[: (steps + 1) * batch_size]
    batches = [train_batch(student.processor, posts[i:i + batch_size],
                           [prompt.direct_target(p.keyphrases) for p in posts[i:i + batch_size]])
               for i in range(0, len(posts), batch_size)]
    tokens, elapsed, losses = 0, 0.0, []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        with autocast("cpu", amp):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:                                                # step 0 is the warm-up
            elapsed += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
        click.echo(f"  {precision} step {i}/{len(batches) - 1} loss {loss.item():.3f}", err=True)
    return {"precision": precision, "steps": len(batches) - 1, "tokens": tokens,
            "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1),
            "mean_loss": round(sum(losses) / len(losses), 4)}


@click.command()
@click.option("--student", required=True, help="Student checkpoint folder or run dir.")
@click.option("--posts", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--steps", type=int, default=6, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--threads", type=int, default=0, show_default=True, help="torch threads (0 = default).")
def main(student: str, posts: str, steps: int, batch_size: int, threads: int) -> None:
    """Training tokens/s of fp32 vs bf16 autocast (see module docstring)."""
    from train.precision import cpu_has_bf16

    rows = [measure(student, posts, steps, batch_size, "fp32", threads)]
    if cpu_has_bf16():
        rows.append(measure(student, posts, steps, batch_size, "bf16", threads))
    else:
        click.echo("bf16 skipped: this CPU has no native bf16", err=True)
    click.echo(f"{'precision':<10}{'tokens/s':>10}{'steps':>7}{'mean loss':>11}")
    for r in rows:
        click.echo(f"{r['precision']:<10}{r['tokens_per_s']:>10}{r['steps']:>7}{r['mean_loss']:>11}")
    speedup = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"] if len(rows) > 1 else None
    click.echo(json.dumps({"student": student, "batch_size": batch_size, "rows": rows,
                           "bf16_speedup": round(speedup, 2) if speedup else None}))


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(f"train_speed: {exc}") from None
