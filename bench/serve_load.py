"""Load test for mmkp-serve: N concurrent clients against a real server, every answer checked.

    python -m bench.serve_load --bundle DIR [--clients 1,4,16,64] [--requests 64] [--bad-share 0.1]

Starts `mmkp-serve` on a free port of 127.0.0.1 (loopback only, always) for the bundle, computes
each workload post's one-by-one output in this process first (KeyphrasePredictor, batch 1), then for
each N fires a fixed, seeded list of requests from N httpx async clients: good posts (with and
without images, each request a unique id) with a share of bad ones mixed in (invalid JSON, unknown
field, bad think mode, bad image, too many tokens, empty post). 429s are retried after their
Retry-After. Checked: every good request answered 200 with exactly its own post's one-by-one
prediction (0 lost, duplicated, mixed up or changed), every bad one a 4xx naming its field.
Reported per N: throughput, p50/p99 latency, and the histogram of rows per decoder step read from
the server's /metrics. Bounded in requests and in time (--time-limit). A table for people, then one
JSON line; exit 1 if any check failed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import numpy as np

from mmkp_edge.cli import entry
from mmkp_edge.errors import InputError
from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import Query

from .machine import machine_facts
from .report import aligned
from .timing import percentiles
from .workload import WorkloadConfig, load_workload

HOST = "127.0.0.1"
CHECKED = ("keyphrases", "rationale", "thought", "text", "generated_tokens", "finish")


@dataclass(frozen=True)
class Spec:
    """One request to send: a good post (by workload index) or a bad body with its expected field."""
    id: str
    post: int | None = None          # workload index (good requests)
    raw: bytes | None = None         # the body as sent (bad requests)
    param: str | None = None         # the field a bad request's error must name


def bad_bodies(cap: int) -> list[tuple[bytes, str | None]]:
    j = lambda obj: json.dumps(obj).encode()    # noqa: E731
    return [(b'{"text": ', None), (j({"text": "x", "colour": "red"}), "colour"),
            (j({"text": "x", "think": "maybe"}), "think"), (j({"text": "x", "image": "%%%"}), "image"),
            (j({"text": "x", "max_new_tokens": cap + 1}), "max_new_tokens"), (j({"text": ""}), "text")]


def plan(level: int, count: int, posts: int, bad_share: float, cap: int, seed: int) -> list[Spec]:
    rng = np.random.default_rng(seed + level)
    bad = bad_bodies(cap)
    specs = []
    for i in range(count):
        if rng.random() < bad_share:
            raw, param = bad[i % len(bad)]
            specs.append(Spec(id=f"n{level}-{i}", raw=raw, param=param))
        else:
            specs.append(Spec(id=f"n{level}-{i}", post=int(rng.integers(posts))))
    return specs


class Server:
    """`mmkp-serve` in a subprocess on a free loopback port; its port read from the startup line."""

    def __init__(self, bundle: str, flags: list[str], timeout: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "mmkp_edge.cli.serve", "--bundle", bundle,
                                      "--host", HOST, "--port", "0", *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise InputError(f"mmkp-serve did not start within {timeout:g}s") from None
            if line is None:
                raise InputError(f"mmkp-serve did not start (exit {self.proc.wait()})")
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0]
                return

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def stop(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def histograms(url: str) -> dict[str, dict[str, float]]:
    """Cumulative buckets (+ sum, count) of the rows-per-decode-step and posts-per-prefill
    histograms, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"mmkp_serve_batch_size": {}, "mmkp_serve_prefill_size": {}, "mmkp_serve_model_seconds": {}}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        if family.name in out:
            for s in family.samples:
                out[family.name][s.labels.get("le", s.name.rsplit("_", 1)[1])] = s.value
    return out


def _mean(before: dict, after: dict) -> float | None:
    count = after.get("count", 0) - before.get("count", 0)
    return round((after.get("sum", 0) - before.get("sum", 0)) / count, 2) if count else None


def _busy(before: dict, after: dict, wall: float) -> float | None:
    """Share of the level's wall time the server's worker spent in generation steps: near 1, the
    model is the bottleneck; well below, HTTP and the clients (on the same cores) are."""
    key = "mmkp_serve_model_seconds"
    spent = after[key].get("total", 0.0) - before[key].get("total", 0.0)
    return round(spent / wall, 3) if wall else None


def histogram_delta(before: dict, after: dict) -> dict[str, int]:
    """Rows-per-step counts per bucket ("≤1", "≤2", …) between two scrapes."""
    les = sorted((k for k in after if k not in ("sum", "count", "created")), key=lambda k: float(k))
    out, below = {}, 0.0
    for le in les:
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - below:
            out[f"<={le.removesuffix('.0')}"] = int(cumulative - below)
        below = cumulative
    return out


async def _send(client: httpx.AsyncClient, spec: Spec, bodies: list[bytes], deadline: float) -> dict:
    raw = spec.raw
    if raw is None:
        raw = bodies[spec.post].replace(b'"__ID__"', json.dumps(spec.id).encode())
    t0, retries = time.perf_counter(), 0
    while True:
        try:
            r = await client.post("/v1/keyphrases", content=raw, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            return {"spec": spec, "status": None, "error": type(exc).__name__, "retries": retries,
                    "latency_ms": (time.perf_counter() - t0) * 1000}
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        retries += 1
        wait = float(r.headers.get("retry-after", 1))
        await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
    try:
        body = r.json()
    except ValueError:
        body = None
    return {"spec": spec, "status": r.status_code, "body": body, "retries": retries,
            "latency_ms": (time.perf_counter() - t0) * 1000}


async def run_level(url: str, clients: int, specs: list[Spec], bodies: list[bytes], deadline: float):
    todo = list(reversed(specs))
    results = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        async def worker():
            while todo and time.monotonic() < deadline:
                results.append(await _send(client, todo.pop(), bodies, deadline))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def check(specs: list[Spec], results: list[dict], reference: list[dict]) -> dict:
    """Count what went wrong: lost, duplicated, mixed up, changed, bad requests not refused right."""
    sent = {s.id for s in specs}
    seen: dict[str, int] = {}
    counts = {"ok": 0, "lost": len(specs) - len(results), "duplicated": 0, "mixed": 0, "changed": 0,
              "bad_refused": 0, "bad_wrong": 0, "retries_429": sum(r["retries"] for r in results)}
    for r in results:
        spec = r["spec"]
        if spec.post is None:
            error = (r.get("body") or {}).get("error") if isinstance(r.get("body"), dict) else None
            good = r["status"] and 400 <= r["status"] < 500 and error and error.get("param") == spec.param
            counts["bad_refused" if good else "bad_wrong"] += 1
            continue
        preds = (r.get("body") or {}).get("predictions") if r["status"] == 200 else None
        if not preds:
            counts["lost"] += 1
            continue
        ids = [p.get("id") for p in preds]
        for i in ids:
            seen[i] = seen.get(i, 0) + 1
        if ids != [spec.id] or any(i not in sent for i in ids):
            counts["mixed"] += 1
        elif {k: preds[0][k] for k in CHECKED} != reference[spec.post]:
            counts["changed"] += 1
        else:
            counts["ok"] += 1
    counts["duplicated"] = sum(n - 1 for n in seen.values() if n > 1)
    return counts


def run_load(bundle: str, levels: list[int], requests: int, bad_share: float, posts: int, think: str,
             max_new_tokens: int, server_flags: list[str], time_limit: float, seed: int,
             image_share: float, posts_file: str | None, say) -> dict:
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workload = [p for p in load_workload(WorkloadConfig(posts=posts, seed=seed, image_share=image_share,
                                                            posts_file=posts_file), tmp)
                    if p.text or p.image]
        images = [Path(p.image).read_bytes() if p.image else None for p in workload]
    say(f"one-by-one reference for {len(workload)} posts")
    predictor = KeyphrasePredictor.from_bundle(bundle)
    reference = []
    for p, image in zip(workload, images):
        pred = predictor.predict([Query(p.text, image, ocr=p.ocr)], think=think, batch_size=1,
                                 max_new_tokens=max_new_tokens)[0]
        if pred.error:
            raise InputError(f"workload post {p.id}: {pred.error}")
        reference.append({k: pred.to_json()[k] for k in CHECKED})
    del predictor
    bodies = [json.dumps({"id": "__ID__", "text": p.text, "ocr": p.ocr, "think": think,
                          "max_new_tokens": max_new_tokens,
                          "image": base64.b64encode(im).decode() if im else None}).encode()
              for p, im in zip(workload, images)]
    server = Server(bundle, server_flags, timeout=120)
    say(f"server at {server.url}")
    rows = []
    try:
        for n in levels:
            deadline = start + time_limit
            if time.monotonic() > deadline:
                say(f"time limit reached before N={n}")
                break
            specs = plan(n, requests, len(workload), bad_share, max_new_tokens, seed)
            before = histograms(server.url)
            results, wall = asyncio.run(run_level(server.url, n, specs, bodies, deadline))
            after = histograms(server.url)
            counts = check(specs, results, reference)
            good_ms = [r["latency_ms"] for r in results if r["spec"].post is not None and r["status"] == 200]
            lat = {k: round(v, 1) for k, v in percentiles(good_ms).items()} if good_ms else {}
            b0, b1 = before["mmkp_serve_batch_size"], after["mmkp_serve_batch_size"]
            p0, p1 = before["mmkp_serve_prefill_size"], after["mmkp_serve_prefill_size"]
            rows.append({"clients": n, "requests": len(specs), **counts, "wall_s": round(wall, 3),
                         "posts_per_s": round(len(good_ms) / wall, 2) if wall else None,
                         "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                         "decode_steps": int(b1.get("count", 0) - b0.get("count", 0)),
                         "joins": int(p1.get("count", 0) - p0.get("count", 0)),
                         "mean_batch": _mean(b0, b1), "mean_join": _mean(p0, p1),
                         "model_busy": _busy(before, after, wall),
                         "batch_histogram": histogram_delta(b0, b1)})
            say(f"N={n}: {counts['ok']} ok, {counts['lost']} lost, {rows[-1]['posts_per_s']} posts/s")
    finally:
        exit_code = server.stop(60)
    passed = bool(rows) and len(rows) == len(levels) and exit_code == 0 and all(
        r["lost"] == r["duplicated"] == r["mixed"] == r["changed"] == r["bad_wrong"] == 0 for r in rows)
    return {"bench": "serve_load", "bundle": str(bundle), "think": think, "max_new_tokens": max_new_tokens,
            "workload_posts": len(workload), "with_image": sum(i is not None for i in images),
            "server_flags": server_flags, "server_exit": exit_code, "levels": rows, "passed": passed,
            "machine": machine_facts()}


def render(report: dict) -> str:
    header = ["clients", "requests", "ok", "bad→4xx", "429 retries", "lost/dup/mixed/changed", "posts/s",
              "p50 ms", "p99 ms", "mean join", "mean batch", "model busy", "rows per decode step (steps)"]
    rows = [[str(r["clients"]), str(r["requests"]), str(r["ok"]),
             f"{r['bad_refused']}/{r['bad_refused'] + r['bad_wrong']}", str(r["retries_429"]),
             f"{r['lost']}/{r['duplicated']}/{r['mixed']}/{r['changed']}", str(r["posts_per_s"]),
             str(r["p50_ms"]), str(r["p99_ms"]), str(r["mean_join"]), str(r["mean_batch"]),
             str(r["model_busy"]), " ".join(f"{k}:{v}" for k, v in r["batch_histogram"].items())] for r in report["levels"]]
    verdict = "PASSED" if report["passed"] else "FAILED"
    return (aligned(header, rows) + f"\n\n{verdict}: every good request checked against its post's "
            f"one-by-one output; server exit {report['server_exit']} after SIGTERM")


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Example:
  python -m bench.serve_load --bundle bundle/ --clients 1,4,16,64 --requests 64 --threads 2""")
@click.option("--bundle", type=click.Path(file_okay=False, exists=True), required=True)
@click.option("--clients", default="1,4,16,64", show_default=True, help="Concurrency levels N.")
@click.option("--requests", type=click.IntRange(1, 2000), default=64, show_default=True,
              help="Requests per level.")
@click.option("--bad-share", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--posts", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Distinct workload posts.")
@click.option("--posts-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Real posts (JSONL / CMKP) instead of synthetic ones.")
@click.option("--image-share", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--think", type=click.Choice(["off", "on", "auto"]), default="auto", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Server ORT threads (0 = default).")
@click.option("--time-limit", type=click.FloatRange(1, 3600), default=600, show_default=True,
              help="Seconds for the whole run (levels not reached are reported missing).")
@click.option("--seed", type=int, default=0, show_default=True)
def cli(bundle, clients, requests, bad_share, posts, posts_file, image_share, think, max_new_tokens,
        max_batch, max_queue, threads, time_limit, seed):
    """Load-test mmkp-serve on BUNDLE at several concurrency levels; check every answer."""
    try:
        levels = [int(x) for x in clients.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"--clients takes comma-separated integers; got {clients!r}") from None
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise click.UsageError("--clients: levels must be within 1..256")
    flags = ["--max-batch", str(max_batch), "--max-queue", str(max_queue), "--threads", str(threads),
             "--max-new-tokens", str(max_new_tokens), "--max-posts", "1"]
    report = run_load(bundle, levels, requests, bad_share, posts, think, max_new_tokens, flags, time_limit,
                      seed, image_share, posts_file, say=lambda m: click.echo(f"serve_load: {m}", err=True))
    click.echo(render(report))
    click.echo(json.dumps(report))
    return 0 if report["passed"] else 1


main = entry(cli, "serve_load")

if __name__ == "__main__":
    main()
