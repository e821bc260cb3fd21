"""`mmkp-serve`: the keyphrase predictor as an HTTP service (mmkp_edge.serve).

Thin by design: parse flags into a ServeConfig, check it, call `serve()`. The serving stack
(starlette, uvicorn, prometheus-client) is an extra, imported only here, so a missing one is one
line naming the install command. Exit codes: 0 after a clean drain, 1 if posts were abandoned at
shutdown, 2 usage errors (a bad flag, a bundle that does not load, a port in use).
"""

from __future__ import annotations

import click

from ..bundle import BUNDLE_ENV
from ..errors import InputError
from ..prompt import THINK_MODES
from . import entry

INSTALL_HINT = "pip install 'mmkp-edge[serve]'"

EPILOG = f"""\b
Examples:
  mmkp-serve --bundle bundle/ --port 8000 --max-batch 16 --threads 2
  curl -s localhost:8000/v1/keyphrases -H 'content-type: application/json' \\
       -d '{{"text": "storm over the city tonight", "think": "off"}}'
  curl -s localhost:8000/v1/keyphrases -F text='beach sunset' -F image=@photo.jpg
\b
Endpoints: POST /v1/keyphrases (one post or {{"posts": [...]}}; JSON with base64 images, or a
multipart upload), POST /v1/chat/completions and GET /v1/models (OpenAI-compatible),
GET /healthz, GET /metrics (Prometheus). SIGTERM drains the requests in flight, then exits.
The bundle defaults to ${BUNDLE_ENV}.
"""


def _config(options: dict):
    try:
        from ..serve.config import ServeConfig
    except ImportError as exc:   # pragma: no cover - exercised only without the extra
        raise InputError(f"mmkp-serve needs the serve extra ({exc.name} is missing): "
                         f"{INSTALL_HINT}") from None
    return ServeConfig(**options).validate()


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(file_okay=False), envvar=BUNDLE_ENV, required=True,
              help=f"Exported bundle folder (default: ${BUNDLE_ENV}).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Listen port (0 = any free port; the startup line names it).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Posts decoded together; new posts join between decode steps.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Posts waiting to join the batch; beyond it requests get 429 + Retry-After.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="ORT intra-op threads (0 = ORT default).")
@click.option("--providers", default="cpu", show_default=True,
              help="Execution providers: cpu, cuda or cuda,cpu.")
@click.option("--think", type=click.Choice(THINK_MODES), default="auto", show_default=True,
              help="Think mode of a post that names none.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="The most a post may ask for (a post that asks none gets 96).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds per request, arrival to answer; then 504.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=8 << 20, show_default=True)
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=16_000_000, show_default=True)
@click.option("--max-text-chars", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Characters of a post's text (and of its ocr).")
@click.option("--max-posts", type=click.IntRange(min=1), default=32, show_default=True,
              help="Posts in one /v1/keyphrases request.")
@click.option("--retry-after", "retry_after_s", type=click.IntRange(min=0), default=1, show_default=True,
              help="Retry-After seconds sent with 429 / 503.")
@click.option("--drain-timeout", "drain_timeout_s", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="On SIGTERM, seconds to finish the requests in flight.")
@click.option("--model-name", default="",
              help="Model id for the chat endpoint (default: the bundle folder name).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle files.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True, help="uvicorn's log level.")
def cli(no_verify, **options):
    """Serve keyphrase predictions over HTTP with continuous batching (see the endpoints below)."""
    cfg = _config({**options, "verify": not no_verify})
    from ..serve.server import serve

    return serve(cfg)


main = entry(cli, "mmkp-serve")

if __name__ == "__main__":
    main()
