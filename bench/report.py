"""The benchmark's outputs for people: an aligned table, a floor card, and a PNG plot.

(The machine-readable output is the report dict itself, printed by the CLI as the last stdout line.)
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = (  # header, key, format
    ("variant", "variant", "{}"), ("think", "think", "{}"), ("batch", "batch_size", "{}"),
    ("TTFT ms", "ttft_ms", "{:.0f}"), ("decode ms/step", "decode_ms_per_step", "{:.1f}"),
    ("× floor", "floor_multiple", "{:.2f}"), ("p50 ms", "p50", "{:.0f}"), ("p90 ms", "p90", "{:.0f}"),
    ("p99 ms", "p99", "{:.0f}"), ("posts/s", "posts_per_s", "{:.2f}"), ("tok/s", "tokens_per_s", "{:.1f}"),
    ("tok/post", "tokens_per_post", "{:.1f}"), ("think", "think_rate", "{:.0%}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key, row.get("latency_ms", {}).get(key))
    return "–" if value is None else fmt.format(value)


def aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)   # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _growth(variant: dict) -> str:
    """Peak RSS minus RSS before loading (older reports lack it)."""
    value = variant.get("peak_rss_growth_mb")
    return "–" if value is None else f"{value:.0f}"


def measurement_table(report: dict) -> str:
    rows = [[_cell(m, key, fmt) for _, key, fmt in COLUMNS] for m in report["measurements"]]
    return aligned([h for h, _, _ in COLUMNS], rows)


def variant_table(report: dict) -> str:
    header = ["variant", "bundle MB", "decoder weights MB", "floor ms/step", "load s", "peak RSS MB",
              "RSS growth MB"]
    rows = []
    for v in report["variants"]:
        rows.append([v["name"], f"{v['bundle_bytes'] / 1e6:.1f}" if "bundle_bytes" in v else "–",
                     f"{v['decoder_weight_bytes'] / 1e6:.1f}" if "decoder_weight_bytes" in v else "–",
                     f"{v['floor_ms_per_step']:.1f}" if "floor_ms_per_step" in v else "–",
                     f"{v['load_s']:.1f}", f"{v['peak_rss_mb']:.0f}", _growth(v)])
    return aligned(header, rows)


def agreement_lines(report: dict) -> str:
    header = ["variant", "think", "vs", "keyphrases", "tokens identical", "token prefix", "posts w/ kp"]
    rows = [[a["variant"], a["think"], a["reference"], f"{a['keyphrase_agreement']:.0%}",
             f"{a['token_sequence_agreement']:.0%}", f"{a['token_prefix_agreement']:.0%}",
             f"{a['posts_with_keyphrases']}/{a['posts']}"] for a in report["agreement"]]
    return aligned(header, rows) if rows else "agreement: (one variant only)"


def render(report: dict) -> str:
    """Everything for people, as one block of text."""
    m = report["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none of note"
    w = report["workload"]
    t = report["config"]["timing"]
    llama = m["versions"].get("llama-cpp-python") if report["config"].get("llama_cpp") else None
    budget = (f"exactly {t['max_new_tokens']} new tokens (forced)" if t.get("force_tokens")
              else f"≤{t['max_new_tokens']} new tokens")
    lines = [
        f"machine  {m['cpu_model']} · {m['usable_cores']} usable cores · {isa} · "
        f"load {m['load_average_1m_at_start']} at start · onnxruntime {m['versions']['onnxruntime']}"
        f" · torch {m['versions']['torch']}" + (f" · llama-cpp-python {llama}" if llama else ""),
        f"workload {w['posts']} posts ({w['with_image']} with an image) · "
        f"{budget} · "
        f"{t['repeats']} timed pass(es) after {t['warmup']} warm-up batch(es)",
        f"memory   copy bandwidth {report['bandwidth']['copy_gb_per_s']:.1f} GB/s "
        f"(floor = decoder weight bytes ÷ bandwidth)",
        "", variant_table(report), "", measurement_table(report), "", agreement_lines(report), "",
    ]
    for key, values in report["headline"].items():
        if values:
            lines.append(f"{key}: " + (", ".join(f"{k} {v}" for k, v in values.items())
                                        if isinstance(values, dict) else str(values)))
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> Path:
    """Two panels: p50 latency per post vs batch size (one line per variant and think mode), and
    mean tokens per post by think mode (one bar group per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = report["measurements"]
    variants = list(dict.fromkeys(m["variant"] for m in ms))
    thinks = list(dict.fromkeys(m["think"] for m in ms))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in variants:
        for t in thinks:
            pts = sorted((m["batch_size"], m["latency_ms"]["p50"]) for m in ms
                         if m["variant"] == v and m["think"] == t)
            if pts:
                left.plot(*zip(*pts), marker="o", label=f"{v} · think {t}")
    left.set(xlabel="batch size", ylabel="p50 latency per post (ms)", title="Latency vs batch size")
    left.set_xscale("log", base=2)
    sizes = sorted({m["batch_size"] for m in ms})
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.minorticks_off()
    left.legend(fontsize=7)
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        vals = []
        for t in thinks:
            rows = [m for m in ms if m["variant"] == v and m["think"] == t]
            vals.append(sum(r["tokens_per_post"] for r in rows) / len(rows) if rows else 0.0)
        right.bar([j + i * width for j in range(len(thinks))], vals, width, label=v)
    right.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(thinks))], thinks)
    right.set(xlabel="think mode", ylabel="generated tokens per post", title="Tokens per post")
    right.legend(fontsize=7)
    fig.suptitle(f"mmkp-bench · {report['machine']['cpu_model']}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown(report: dict) -> str:
    """The measurement and variant tables as GitHub markdown (for a README "Performance" section)."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    sizes = {v["name"]: v for v in report["variants"]}
    var_rows = [[name, f"{v['bundle_bytes'] / 1e6:.0f}" if "bundle_bytes" in v else "–",
                 f"{v['decoder_weight_bytes'] / 1e6:.0f}" if "decoder_weight_bytes" in v else "–",
                 f"{v['floor_ms_per_step']:.1f}" if "floor_ms_per_step" in v else "–",
                 f"{v['peak_rss_mb']:.0f}", _growth(v)] for name, v in sizes.items()]
    rows = [[_cell(m, key, fmt) for _, key, fmt in COLUMNS] for m in report["measurements"]]
    head = ["variant", "bundle MB", "decoder weights MB", "floor ms/step", "peak RSS MB", "RSS growth MB"]
    return (table(head, var_rows)
            + "\n\n" + table([h for h, _, _ in COLUMNS], rows) + "\n")
