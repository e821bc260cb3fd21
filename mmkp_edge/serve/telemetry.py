"""Prometheus metrics for mmkp-serve, in a registry of their own.

A registry per server (not prometheus_client's global one) so several servers in one process —
the tests start many — never share or double-register series. What is measured is what an
operator of a continuous-batching service needs to see: load (queue depth, rows in the running
batch, rows per decode step, posts per join prefill), latency (time to first token, decode step),
output (generated tokens) and failures (requests by route and status, errors by kind).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

ROUTES = ("/v1/keyphrases", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics")
ERROR_KINDS = ("bad_request", "body_too_large", "unknown_model", "overloaded", "draining",
               "timeout", "disconnected", "internal", "not_found")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Telemetry:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mmkp_serve_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("mmkp_serve_errors", "Requests that failed, by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("mmkp_serve_queue_depth", "Posts waiting to join the batch", registry=r)
        self.running = Gauge("mmkp_serve_running_batch_size",
                             "Posts in the running batch (all think modes)", registry=r)
        self.batch = Histogram("mmkp_serve_batch_size", "Posts decoded together in one decode step",
                               buckets=BATCH_BUCKETS, registry=r)
        self.prefill = Histogram("mmkp_serve_prefill_size", "Posts prefilled together when joining the batch",
                                 buckets=BATCH_BUCKETS, registry=r)
        self.ttft = Histogram("mmkp_serve_ttft_seconds", "Arrival of a request to a post's first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.step = Histogram("mmkp_serve_decode_step_seconds", "One decode step of a running batch",
                              buckets=STEP_BUCKETS, registry=r)
        self.tokens = Counter("mmkp_serve_generated_tokens", "Tokens generated", registry=r)
        self.model_seconds = Counter("mmkp_serve_model_seconds",
                                     "Wall time the worker spent in generation steps (prefill, "
                                     "vision and decode): its rate is the model's busy share",
                                     registry=r)
        self.posts = Counter("mmkp_serve_posts", "Posts answered, by finish reason", ["finish"],
                             registry=r)
        for kind in ERROR_KINDS:           # every series exists from the start (0, not absent)
            self.errors.labels(kind)

    def watch(self, queue_depth: Callable[[], float], running: Callable[[], float]) -> None:
        """Read the gauges from the scheduler at scrape time (always current, nothing to update)."""
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)

    def route(self, path: str) -> str:
        return path if path in ROUTES else "other"

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
