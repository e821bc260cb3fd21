"""The Starlette app: HTTP in, checked posts to the scheduler, predictions (or a JSON error) out.

Routes: `POST /v1/keyphrases` (native: one post or {"posts": [...]}, JSON or a multipart upload),
`POST /v1/chat/completions` + `GET /v1/models` (OpenAI-compatible), `GET /healthz`, `GET /metrics`.
Every failure is a JSON body in OpenAI's error shape with the status that says what happened —
400 bad field (named in `param`), 404 unknown route or model, 413 body too large, 415 content
type, 429 queue full and 503 shutting down (both with Retry-After), 504 past the per-request
timeout — so no client mistake becomes a 500 or a traceback in the log. The body limit and the
request metrics are one pure ASGI middleware (not BaseHTTPMiddleware, which would hide client
disconnects); a handler waits on its job and on the connection together, so a client that goes
away frees its rows at the next decode step instead of decoding for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..predictor import KeyphrasePredictor
from . import chat_api
from .config import ServeConfig
from .inputs import (POST_FIELDS, ApiError, Limits, PostRequest, native_posts, parse_json,
                     post_from_fields, prepare)
from .scheduler import Draining, Job, Overloaded, Scheduler, Slot
from .telemetry import Telemetry

log = logging.getLogger("mmkp_edge.serve")
CLIENT_GONE = 499          # nginx's "client closed request": never sent, only counted


class Service:
    """What the handlers share: the predictor, the scheduler, the limits, the metrics."""

    def __init__(self, predictor: KeyphrasePredictor, cfg: ServeConfig, *,
                 telemetry: Telemetry | None = None, before_step=None):
        self.predictor = predictor
        self.cfg = cfg
        self.telemetry = telemetry or Telemetry()
        self.scheduler = Scheduler(predictor, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                   telemetry=self.telemetry, before_step=before_step)
        self.limits = Limits(max_text_chars=cfg.max_text_chars, max_image_pixels=cfg.max_image_pixels,
                             max_posts=cfg.max_posts, max_new_tokens=cfg.max_new_tokens,
                             default_new_tokens=cfg.default_new_tokens, think=cfg.think)
        self.model = cfg.model_name or Path(predictor.bundle.root).resolve().name
        self.created = int(time.time())
        self.in_flight = 0         # requests inside run() (the shutdown line reports it)
        self.abandoned = 0         # posts whose request was cancelled by the server's shutdown

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.cfg.retry_after_s)}

    async def run(self, request: Request, posts: list[PostRequest]) -> list[Slot]:
        """Prepare, queue and await `posts`; ApiError for overload, timeout, shutdown, failure."""
        self.in_flight += 1
        try:
            return await self._run(request, posts)
        finally:
            self.in_flight -= 1

    async def _run(self, request: Request, posts: list[PostRequest]) -> list[Slot]:
        loop = asyncio.get_running_loop()
        arrived = time.perf_counter()
        deadline = loop.time() + self.cfg.timeout_s
        if self.scheduler.closing:
            raise ApiError("the server is shutting down; retry on another replica", status=503,
                           code="draining", kind="draining", headers=self._retry())
        prepared = await anyio.to_thread.run_sync(
            lambda: [prepare(self.predictor, p, self.limits) for p in posts])
        answered: asyncio.Future = loop.create_future()

        def done(job: Job) -> None:                     # worker thread → event loop
            with contextlib.suppress(RuntimeError):     # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(lambda: answered.done() or answered.set_result(job))

        job = Job([Slot(p, post.think) for p, post in zip(prepared, posts)], done, arrived_at=arrived)
        try:
            self.scheduler.submit(job)
        except Overloaded:
            raise ApiError(f"the queue is full ({self.cfg.max_queue} posts waiting); retry after "
                           f"{self.cfg.retry_after_s}s", status=429, code="overloaded",
                           kind="overloaded", headers=self._retry()) from None
        except Draining:
            raise ApiError("the server is shutting down; retry on another replica", status=503,
                           code="draining", kind="draining", headers=self._retry()) from None
        gone = asyncio.ensure_future(_disconnect(request))
        try:
            await asyncio.wait({answered, gone}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:      # uvicorn's drain timed out: free the rows, say so
            self.scheduler.cancel(job, "shutdown")
            self.abandoned += len(job.slots)
            raise ApiError("the server shut down before this request finished; retry on another "
                           "replica", status=503, code="draining", kind="draining",
                           headers=self._retry()) from None
        finally:
            gone.cancel()
        if answered.done():
            if job.error:
                raise ApiError(job.error, status=500, code="internal", kind="internal")
            return job.slots
        if gone.done() and not gone.cancelled():
            self.scheduler.cancel(job, "disconnected")
            raise ApiError("the client disconnected", status=CLIENT_GONE, code="disconnected",
                           kind="disconnected")
        self.scheduler.cancel(job, "timeout")
        raise ApiError(f"no answer within {self.cfg.timeout_s:g}s (the per-request timeout)",
                       status=504, code="timeout", kind="timeout")


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ------------------------------------------------------------ handlers

async def keyphrases(request: Request) -> Response:
    service: Service = request.app.state.service
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        posts = [await _form_post(request, service.limits)]
    elif ctype in ("application/json", ""):
        posts = native_posts(parse_json(await request.body()), service.limits)
    else:
        raise ApiError(f"content type {ctype!r}: send application/json or multipart/form-data",
                       status=415, code="unsupported_media_type")
    slots = await service.run(request, posts)
    return JSONResponse({"predictions": [s.prediction.to_json() for s in slots]})


async def _form_post(request: Request, limits: Limits) -> PostRequest:
    """A form with the post's fields; the image as a file (multipart) or base64 in `image`."""
    async with request.form(max_files=1, max_fields=len(POST_FIELDS) + 1) as form:
        fields: dict = {}
        for key, value in form.multi_items():
            if key in fields:
                raise ApiError(f"{key}: given twice", key)
            fields[key] = await value.read() if hasattr(value, "read") else value
    if len(fields) == 1 and next(iter(fields)).lstrip().startswith("{"):
        raise ApiError("the body looks like JSON but was sent as a form: add the header "
                       "'Content-Type: application/json'", code="unsupported_media_type", status=415)
    return post_from_fields(fields, "", limits, limits.think, limits.default_new_tokens)


async def chat_completions(request: Request) -> Response:
    service: Service = request.app.state.service
    post = chat_api.chat_post(parse_json(await request.body()), service.limits, service.model)
    slot = (await service.run(request, [post]))[0]
    return JSONResponse(chat_api.completion(slot.prediction, len(slot.prepared.request.input_ids),
                                            service.model))


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse(chat_api.models(service.model, service.created))


async def healthz(request: Request) -> Response:
    service: Service = request.app.state.service
    m = service.predictor.manifest
    q = m.quantization
    closing = service.scheduler.closing
    return JSONResponse({
        "status": "draining" if closing else "ok", "model": service.model,
        "bundle": str(service.predictor.bundle.root), "family": m.family, "stage": m.stage,
        "source": m.source, "dtype": m.dtype, "backend": m.backend, "prompt": m.prompt.id,
        "quantization": f"{q.get('method')} int{q.get('bits')}" if q else None,
        "providers": service.predictor.bundle.providers, "max_batch": service.cfg.max_batch,
        "max_queue": service.cfg.max_queue, "queue_depth": service.scheduler.queue_depth,
        "running": service.scheduler.running_rows}, status_code=503 if closing else 200)


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(service.telemetry.exposition(), media_type=service.telemetry.content_type)


# ------------------------------------------------------------ errors and the middleware

def _error_response(request: Request, exc: ApiError) -> Response:
    service: Service = request.app.state.service
    service.telemetry.errors.labels(exc.kind).inc()
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _error_response(request, exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found" if exc.status_code in (404, 405) else "bad_request"
    return _error_response(request, ApiError(f"{request.method} {request.url.path}: {exc.detail}",
                                             status=exc.status_code, code=str(exc.status_code),
                                             kind=kind, headers=dict(exc.headers or {})))


class _Guard:
    """Pure ASGI: refuse bodies over the limit (by Content-Length at once, else while reading)
    and count every answer by route and status."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        telemetry, limit = self.service.telemetry, self.service.cfg.max_body_bytes
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        too_large = ApiError(f"the request body is larger than {limit} bytes", status=413,
                             code="body_too_large", kind="body_too_large")
        received = [0]

        async def receiving():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise too_large
            return message

        declared = dict(scope["headers"]).get(b"content-length", b"0").decode("latin-1").strip()
        refusal = None
        if not declared.isdigit():
            refusal = ApiError("Content-Length is not a number", code="invalid_content_length")
        elif int(declared) > limit:
            refusal = too_large
        try:
            if refusal is None:
                await self.app(scope, receiving, sending)
                return
            telemetry.errors.labels(refusal.kind).inc()
            await JSONResponse(refusal.body(), status_code=refusal.status,
                               headers={"Connection": "close"})(scope, receive, sending)
        finally:
            telemetry.requests.labels(telemetry.route(scope["path"]), str(status[0])).inc()


def build_app(predictor: KeyphrasePredictor, cfg: ServeConfig, *, before_step=None) -> Starlette:
    """The ASGI app; its lifespan starts the scheduler and, at shutdown, drains it."""
    service = Service(predictor, cfg.validate(), before_step=before_step)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.scheduler.start()
        yield
        left = await anyio.to_thread.run_sync(service.scheduler.close, cfg.drain_timeout_s)
        left += service.abandoned
        if left:
            log.warning("mmkp-serve: %d posts were still unfinished at shutdown", left)
        app.state.abandoned = left

    app = Starlette(
        routes=[Route("/v1/keyphrases", keyphrases, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/models", list_models, methods=["GET"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"])],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan)
    app.state.service = service
    app.state.abandoned = 0
    app.add_middleware(_Guard, service=service)
    return app
