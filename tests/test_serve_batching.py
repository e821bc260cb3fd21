"""Continuous batching, backpressure and shutdown of a real mmkp-serve (tiny ONNX bundle).

The scheduler's worker is held at a gate (tests/serve_harness.py) so each scenario is built
deterministically: requests queue while it is held, exactly N decode steps are let through, and
state is observed (queue depth, rows, counters) before the next move. Posts that join a running
batch must get their one-by-one tokens; a full queue answers 429 and the server recovers; a client
that disconnects frees its row at the next step; SIGTERM finishes every accepted request, refuses
new connections, and exits 0 — or, past --drain-timeout, answers 503 and exits 1.
"""

import asyncio
import base64
import io
import signal
import socket
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import Query
from serve_harness import ProcessServer, ThreadServer, metric, wait_until
from tiny_onnx import build_bundle


def png(seed: int, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


POSTS = [{"id": "a", "text": "a storm over the city tonight", "image": png(1, 40, 60)},
         {"id": "b", "text": "beach sunset"},
         {"id": "c", "text": "", "image": png(2, 17, 9), "think": "off"},
         {"id": "d", "text": "nyc marathon, food and music; summer love " * 3, "ocr": "sale 50%"},
         {"id": "e", "text": "travel", "image": png(3, 64, 64), "think": "on"},
         {"id": "f", "text": "rain and thunder"},
         {"id": "g", "text": "coffee and cake this morning", "think": "off"},
         {"id": "h", "text": "game day"}]
NEW_TOKENS = 24


def body(post: dict) -> dict:
    out = {k: v for k, v in post.items() if k != "image"}
    if "image" in post:
        out["image"] = base64.b64encode(post["image"]).decode()
    return {**out, "max_new_tokens": NEW_TOKENS}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("serve-batching"), stop_bias=9.0)


@pytest.fixture(scope="module")
def predictor(bundle):
    return KeyphrasePredictor.from_bundle(bundle)


@pytest.fixture(scope="module")
def one_by_one(predictor):
    """Each post predicted alone: the reference every served answer must equal."""
    return {p["id"]: predictor.predict([Query(p["text"], p.get("image"), ocr=p.get("ocr", ""))],
                                       think=p.get("think", "auto"), batch_size=1,
                                       max_new_tokens=NEW_TOKENS)[0].to_json() for p in POSTS}


class Client:
    """Requests fired from a background event loop, so the test thread can drive the gate."""

    def __init__(self, url: str):
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = asyncio.run_coroutine_threadsafe(self._make(), self.loop).result()

    async def _make(self):
        return httpx.AsyncClient(base_url=self.url, timeout=60, limits=httpx.Limits(max_connections=100))

    def post(self, path: str, json: dict):
        return asyncio.run_coroutine_threadsafe(self.client.post(path, json=json), self.loop)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _same(got: dict, ref: dict) -> None:
    keys = ("keyphrases", "rationale", "thought", "text", "generated_tokens", "finish")
    assert {k: got[k] for k in keys} == {k: ref[k] for k in keys}, got["id"]


def test_posts_joining_a_running_batch_get_their_one_by_one_output(bundle, predictor, one_by_one):
    with ThreadServer(bundle, predictor=predictor, max_batch=16) as server:
        sched, client = server.service.scheduler, Client(server.url)
        server.gate.hold()
        waves, answers, joined_running = [POSTS[:3], POSTS[3:5], POSTS[5:]], [], []
        for wave in waves:
            before = sched.queue_depth + sched.running_rows
            answers += [client.post("/v1/keyphrases", body(p)) for p in wave]
            wait_until(lambda: sched.queue_depth + sched.running_rows == before + len(wave),
                       what="the wave to be queued")
            joined_running.append(sched.running_rows)
            server.gate.allow(3)                        # 3 rounds: the wave joins, all decode
        server.gate.open()
        got = [a.result(60) for a in answers]
        client.close()
    assert [r.status_code for r in got] == [200] * len(POSTS)
    for post, r in zip(POSTS, got):
        pred = r.json()["predictions"][0]
        assert pred["id"] == post["id"]
        _same(pred, one_by_one[post["id"]])
    assert joined_running[1] > 0 and joined_running[2] > 0, "precondition: waves joined running rows"
    assert max(r.json()["predictions"][0]["timings"]["batch_size"] for r in got) > 1


def test_a_full_queue_answers_429_and_the_server_recovers(bundle, predictor, one_by_one):
    with ThreadServer(bundle, predictor=predictor, max_batch=1, max_queue=2, max_posts=2,
                      retry_after_s=3) as server:
        sched, client = server.service.scheduler, Client(server.url)
        server.gate.hold()
        first = client.post("/v1/keyphrases", body(POSTS[0]))
        wait_until(lambda: sched.running_rows == 1, what="the first post to be admitted")
        queued = [client.post("/v1/keyphrases", body(p)) for p in POSTS[1:3]]
        wait_until(lambda: sched.queue_depth == 2, what="two posts queued")
        refused = httpx.post(f"{server.url}/v1/keyphrases", json=body(POSTS[3]), timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "overloaded"
        server.gate.open()
        done = [f.result(60) for f in [first, *queued]]
        again = httpx.post(f"{server.url}/v1/keyphrases", json=body(POSTS[3]), timeout=30)
        client.close()
        assert metric(server.url, "mmkp_serve_requests_total", route="/v1/keyphrases", status="429") == 1
        assert metric(server.url, "mmkp_serve_errors_total", kind="overloaded") == 1
        sched.close(5)
        draining = httpx.post(f"{server.url}/v1/keyphrases", json=body(POSTS[3]), timeout=30)
        assert draining.status_code == 503 and draining.headers["retry-after"] == "3"
        assert httpx.get(f"{server.url}/healthz").status_code == 503
    assert [r.status_code for r in done] == [200, 200, 200] and again.status_code == 200
    for post, r in zip(POSTS[:4], [*done, again]):
        _same(r.json()["predictions"][0], one_by_one[post["id"]])


def _raw_request(url: str, payload: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/keyphrases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    return sock


def test_a_client_that_disconnects_frees_its_row(bundle, predictor, one_by_one):
    import json

    long = [p for p in POSTS if one_by_one[p["id"]]["generated_tokens"] >= 6
            and p.get("think", "auto") == "auto"]
    assert len(long) >= 2, "precondition: two posts that decode for a while"
    with ThreadServer(bundle, predictor=predictor, max_batch=4) as server:
        sched, client = server.service.scheduler, Client(server.url)
        server.gate.hold()
        sock = _raw_request(server.url, json.dumps(body(long[0])).encode())
        kept = client.post("/v1/keyphrases", body(long[1]))
        wait_until(lambda: sched.running_rows + sched.queue_depth == 2, what="both posts accepted")
        server.gate.allow(2)                                # both prefilled, decoding
        assert sched.running_rows == 2
        sock.close()                                        # the client goes away mid-decode
        wait_until(lambda: metric(server.url, "mmkp_serve_errors_total", kind="disconnected") == 1,
                   what="the disconnect to be seen")
        server.gate.allow(1)                                # next round boundary: its row is freed
        assert sched.running_rows <= 1
        assert metric(server.url, "mmkp_serve_posts_total", finish="cancelled") == 1
        server.gate.open()
        _same(kept.result(60).json()["predictions"][0], one_by_one[long[1]["id"]])
        client.close()
        assert metric(server.url, "mmkp_serve_errors_total", kind="internal") == 0


def test_a_request_past_its_timeout_is_a_504_and_frees_its_rows(bundle, predictor):
    with ThreadServer(bundle, predictor=predictor, timeout_s=0.3) as server:
        sched = server.service.scheduler
        server.gate.hold()
        r = httpx.post(f"{server.url}/v1/keyphrases", json={"posts": [body(POSTS[1]), body(POSTS[5])]},
                       timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        server.gate.allow(1)
        assert sched.running_rows == 0 and sched.queue_depth == 0


def test_sigterm_finishes_every_accepted_request_then_exits(bundle, one_by_one):
    server = ProcessServer(bundle, max_batch=2, log_level="info")
    try:
        server.send("hold")
        client = Client(server.url)
        answers = [client.post("/v1/keyphrases", body(p)) for p in POSTS[:5]]
        wait_until(lambda: metric(server.url, "mmkp_serve_queue_depth")
                   + metric(server.url, "mmkp_serve_running_batch_size") == 5, what="5 posts accepted")
        server.proc.send_signal(signal.SIGTERM)
        line = server.read_stderr_until("shutting down")
        assert "finishing 5 requests in flight" in line
        with pytest.raises(OSError):                        # no new connections once draining
            socket.create_connection(server.url.removeprefix("http://").split(":"), timeout=5)
        server.send("open")
        got = [a.result(60) for a in answers]
        client.close()
        assert server.proc.wait(30) == 0
    finally:
        server.kill()
    assert [r.status_code for r in got] == [200] * 5
    for post, r in zip(POSTS, got):
        _same(r.json()["predictions"][0], one_by_one[post["id"]])


def test_a_drain_that_times_out_exits_1(bundle):
    server = ProcessServer(bundle, drain_timeout_s=0.2)
    try:
        server.send("hold")
        client = Client(server.url)
        answer = client.post("/v1/keyphrases", body(POSTS[1]))
        wait_until(lambda: metric(server.url, "mmkp_serve_running_batch_size") == 1, what="the post admitted")
        server.proc.send_signal(signal.SIGTERM)
        server.read_stderr_until("timeout graceful shutdown exceeded")    # uvicorn gave up on it
        server.send("open")
        assert server.proc.wait(30) == 1
        r = answer.result(30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        client.close()
        assert "Traceback" not in "".join(server.stderr + list(server.proc.stderr))
    finally:
        server.kill()
