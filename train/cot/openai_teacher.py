"""The `openai` teacher: any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang,
Ollama, LM Studio) over plain async httpx.

The paper's teacher was GPT-4o; the same code talks to a self-hosted model. A long run meets rate
limits, overloaded servers and dropped connections, so each request has a whole-response timeout
and is retried (backoff.py) on 429 / 5xx / timeouts / unreadable bodies, while a 4xx that is the
request's own fault fails that post only. Answers that mean *no* request can succeed — a refused
key (401/403), an unknown model or wrong URL (404), a server that cannot be reached at all — stop
the run with one clear line instead of writing thousands of identical failures.

The API key is read from the environment variable the user names and sent only in the
Authorization header; it is never stored in the config, and any error text the server sends back
is scrubbed of it before it reaches a record, the progress display or an exception.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from dataclasses import dataclass

import httpx

from mmkp_edge.errors import InputError

from .backoff import FATAL_STATUS, parse_retry_after, retry_delay, retryable_status
from .teachers import TeacherFatal, TeacherReply, TeacherRequest, Usage


@dataclass(frozen=True)
class _Failure:
    message: str                     # already scrubbed
    retryable: bool
    retry_after: float | None = None
    unreachable: bool = False        # could not connect at all


def image_data_url(image, max_side: int) -> str:
    """RGB PIL image → `data:image/jpeg;base64,…`, downscaled so its longer side is <= max_side."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(response: httpx.Response) -> str:
    """The error text a server put in its body, in any of the common shapes."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return " ".join(str(err).split())[:300]
    return " ".join(str(body).split())[:300]


def _content(body) -> tuple[str, Usage]:
    """Reply text and usage from a chat-completions body; ValueError when it is not one."""
    try:
        message = body["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("no choices[0].message in the response body") from None
    if isinstance(content, list):   # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        raise ValueError(f"refused: {refusal}" if refusal else "the message has no text content")
    usage = body.get("usage") or {}
    return content, Usage(int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0))


class OpenAITeacher:
    name = "openai"

    def __init__(self, *, model: str, base_url: str, api_key: str | None, key_env: str,
                 concurrency: int, timeout: float, retries: int, backoff_base: float,
                 backoff_max: float, temperature: float, max_tokens: int, image_max_side: int):
        self.model = model
        self.max_in_flight = concurrency
        self.base_url = base_url.rstrip("/")
        self._secret = api_key or None
        self._key_env = key_env
        self._timeout, self._retries = timeout, retries
        self._backoff = (backoff_base, backoff_max)
        self._sampling = {"temperature": temperature, "max_tokens": max_tokens}
        self._image_max_side = image_max_side
        self._slots = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url + "/", headers=headers,
                                         timeout=timeout,
                                         limits=httpx.Limits(max_connections=concurrency))

    def __repr__(self) -> str:   # never show the key
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def payload(self, request: TeacherRequest) -> dict:
        if request.image is None:
            user: str | list = request.prompt
        else:
            url = image_data_url(request.image, self._image_max_side)
            user = [{"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": request.prompt}]
        return {"model": self.model,
                "messages": [{"role": "system", "content": request.system},
                             {"role": "user", "content": user}],
                **self._sampling}

    async def _attempt(self, payload: dict) -> tuple[str, Usage] | _Failure:
        try:
            response = await asyncio.wait_for(self._client.post("chat/completions", json=payload),
                                              self._timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return _Failure(f"timed out after {self._timeout:g}s", retryable=True)
        except httpx.ConnectError as exc:
            return _Failure(self._scrub(f"cannot connect to {self.base_url}: {exc}"),
                            retryable=True, unreachable=True)
        except httpx.TransportError as exc:
            return _Failure(self._scrub(f"connection error: {type(exc).__name__}: {exc}"),
                            retryable=True)
        status = response.status_code
        if status == 200:
            try:
                return _content(response.json())
            except ValueError as exc:   # includes a body that is not JSON
                return _Failure(self._scrub(f"malformed response body: {exc}"), retryable=True)
        message = self._scrub(f"HTTP {status}: {_server_message(response)}")
        if status in FATAL_STATUS:
            raise TeacherFatal(self._fatal_message(status, message))
        return _Failure(message, retryable=retryable_status(status),
                        retry_after=parse_retry_after(response.headers.get("retry-after")))

    def _fatal_message(self, status: int, message: str) -> str:
        url = f"{self.base_url}/chat/completions"
        if status == 404:
            return (f"{url} answered {message} — check --model (is {self.model!r} served there?) "
                    "and --base-url (it usually ends in /v1)")
        key = f"the key in ${self._key_env}" if self._secret else "no API key (--api-key-env '')"
        return f"{url} refused {key}: {message}"

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        payload = self.payload(request)
        async with self._slots:
            attempt = 0
            while True:
                attempt += 1
                result = await self._attempt(payload)
                if not isinstance(result, _Failure):
                    text, usage = result
                    return TeacherReply(text=text, usage=usage, attempts=attempt)
                if not result.retryable or attempt > self._retries:
                    if result.unreachable:
                        raise TeacherFatal(f"{result.message} (after {attempt} attempts) — is the "
                                           "server running, and is --base-url right?")
                    return TeacherReply(text=None, attempts=attempt, error=result.message)
                await asyncio.sleep(retry_delay(attempt, base=self._backoff[0],
                                                cap=self._backoff[1],
                                                retry_after=result.retry_after))

    async def aclose(self) -> None:
        await self._client.aclose()


def api_key(env_name: str, base_url: str) -> str | None:
    """The key from `$env_name`; "" as the name means the server needs none."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise InputError(f"environment variable {env_name} is not set; it must hold the API key "
                         f"for {base_url} (for a server that needs no key, pass --api-key-env '')")
    return key


def build(config) -> OpenAITeacher:
    if not config.base_url.startswith(("http://", "https://")):
        raise InputError(f"--base-url must start with http:// or https://; got {config.base_url!r}")
    return OpenAITeacher(model=config.model, base_url=config.base_url,
                         api_key=api_key(config.api_key_env, config.base_url),
                         key_env=config.api_key_env, concurrency=config.concurrency,
                         timeout=config.timeout, retries=config.retries,
                         backoff_base=config.backoff_base, backoff_max=config.backoff_max,
                         temperature=config.temperature, max_tokens=config.max_tokens,
                         image_max_side=config.image_max_side)
