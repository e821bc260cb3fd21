"""mmkp-serve's HTTP contract on a real server (uvicorn on a free loopback port, tiny ONNX bundle).

What a client sees: the native endpoint answers what mmkp-predict would (same tokens, same fields);
the chat endpoint is usable by this project's OpenAI-compatible teacher client; /healthz and
/metrics (parsed by prometheus_client) report the server; every bad input is a 4xx with a JSON
error naming the field — never a 500 — and the command line fails bad flags with one line.
"""

import asyncio
import base64
import io
import json
import logging
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import Query
from serve_harness import ThreadServer, metric
from tiny_onnx import build_bundle


def png(seed: int, h: int = 30, w: int = 40, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("serve-bundle"), stop_bias=9.0)


@pytest.fixture(scope="module")
def predictor(bundle):
    return KeyphrasePredictor.from_bundle(bundle)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def server(bundle, predictor):
    with ThreadServer(bundle, predictor=predictor, max_text_chars=200, max_image_pixels=5000,
                      max_body_bytes=60_000, max_posts=3, max_new_tokens=32, model_name="tiny") as s:
        s.logged = _Records()
        for name in ("uvicorn", "mmkp_edge.serve"):       # uvicorn's loggers do not propagate
            logging.getLogger(name).addHandler(s.logged)
        yield s
        for name in ("uvicorn", "mmkp_edge.serve"):
            logging.getLogger(name).removeHandler(s.logged)


def _reference(predictor, text, image=None, think="auto", max_new_tokens=96):
    return predictor.predict([Query(text=text, image=image)], think=think, batch_size=1,
                             max_new_tokens=max_new_tokens)[0]


def test_native_endpoint_answers_what_predict_answers(server, predictor):
    image = png(1)
    body = {"posts": [{"id": "a", "text": "storm over the city tonight"},
                      {"id": 7, "text": "beach", "image": b64(image), "think": "off"},
                      {"text": "", "image": "data:image/png;base64," + b64(png(2)), "max_new_tokens": 5}],
            "max_new_tokens": 20}
    r = httpx.post(f"{server.url}/v1/keyphrases", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    refs = [_reference(predictor, "storm over the city tonight", max_new_tokens=20),
            _reference(predictor, "beach", image, think="off", max_new_tokens=20),
            _reference(predictor, "", png(2), max_new_tokens=5)]
    for g, ref in zip(got, refs):
        expected = ref.to_json()
        assert set(g) == set(expected)
        assert {k: g[k] for k in ("keyphrases", "rationale", "thought", "text", "generated_tokens",
                                  "finish")} == {k: expected[k] for k in ("keyphrases", "rationale",
                                  "thought", "text", "generated_tokens", "finish")}
        assert {"queue_s", "ttft_s", "prefill_s", "decode_s", "preprocess_s"} <= set(g["timings"])
    assert [g["id"] for g in got] == ["a", "7", None]
    assert got[1]["text"].startswith("<answer>") and got[2]["generated_tokens"] <= 5


def test_a_jpeg_in_base64_is_an_image_not_a_path(server, predictor):
    jpeg = png(8, fmt="JPEG")
    assert b64(jpeg).startswith("/9j/")                     # base64 of any JPEG starts with '/'
    r = httpx.post(f"{server.url}/v1/keyphrases", json={"text": "x", "image": b64(jpeg), "max_new_tokens": 8},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["text"] == _reference(predictor, "x", jpeg, max_new_tokens=8).text


def test_a_form_without_a_file(server, predictor):
    r = httpx.post(f"{server.url}/v1/keyphrases", data={"text": "hello", "max_new_tokens": "6"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["text"] == _reference(predictor, "hello", max_new_tokens=6).text


def test_multipart_upload(server, predictor):
    image = png(3)
    r = httpx.post(f"{server.url}/v1/keyphrases", data={"text": "sunset", "think": "on", "max_new_tokens": "12"},
                   files={"image": ("p.png", image, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    ref = _reference(predictor, "sunset", image, think="on", max_new_tokens=12)
    assert r.json()["predictions"][0]["text"] == ref.text


def test_the_project_teacher_client_can_call_the_chat_endpoint(server, predictor):
    from train.cot.openai_teacher import OpenAITeacher
    from train.cot.teachers import TeacherRequest

    image = Image.open(io.BytesIO(png(4))).convert("RGB")
    teacher = OpenAITeacher(model="tiny", base_url=f"{server.url}/v1", api_key=None, key_env="",
                            concurrency=2, timeout=30, retries=0, backoff_base=0.1, backoff_max=1,
                            temperature=0.0, max_tokens=16, image_max_side=64)

    async def ask():
        try:
            return await teacher.complete(TeacherRequest(post=None, system="be brief",
                                                         prompt="storm clouds", image=image))
        finally:
            await teacher.aclose()

    reply = asyncio.run(ask())
    assert reply.error is None and reply.text
    payload_image = base64.b64decode(teacher.payload(TeacherRequest(None, "s", "x", image))
                                     ["messages"][1]["content"][0]["image_url"]["url"].split(",", 1)[1])
    ref = _reference(predictor, "storm clouds", payload_image, max_new_tokens=16)
    assert reply.text == ref.text
    assert reply.usage.completion_tokens == ref.generated_tokens and reply.usage.prompt_tokens > 0


def test_chat_reply_shape_and_models(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "new personal best at the marathon"}],
        "max_tokens": 8, "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["mmkp"]["keyphrases"] == body["mmkp"]["keyphrases"] and "timings" in body["mmkp"]
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "tiny"


BAD = [  # (request kwargs, status, param)
    ({"content": b"{not json"}, 400, None),
    ({"json": ["a list"]}, 400, None),
    ({"json": {"text": 5}}, 400, "text"),
    ({"json": {"txet": "typo"}}, 400, "txet"),
    ({"json": {"text": "x" * 201}}, 400, "text"),
    ({"json": {"text": "ok", "ocr": "y" * 201}}, 400, "ocr"),
    ({"json": {"text": "ok", "think": "maybe"}}, 400, "think"),
    ({"json": {"text": "ok", "max_new_tokens": 33}}, 400, "max_new_tokens"),
    ({"json": {"text": "ok", "max_new_tokens": True}}, 400, "max_new_tokens"),
    ({"json": {"text": "ok", "image": "%%%"}}, 400, "image"),
    ({"json": {"text": "ok", "image": b64(b"not an image")}}, 400, "image"),
    ({"json": {"text": "ok", "image": b64(png(5, 100, 100))}}, 400, "image"),
    ({"json": {"text": "ok", "image": "/etc/passwd"}}, 400, "image"),
    ({"json": {"text": "ok", "image": "file:///etc/passwd"}}, 400, "image"),
    ({"json": {"text": "ok", "image": "data:text/plain;base64,aGk="}}, 400, "image"),
    ({"json": {"text": "ok", "image": "https://example.com/a.jpg"}}, 400, "image"),
    ({"json": {"text": "", "image": None}}, 400, "text"),
    ({"json": {"text": "look <image> here"}}, 400, "text"),
    ({"json": {"posts": []}}, 400, "posts"),
    ({"json": {"posts": [{"text": "a"}] * 4}}, 400, "posts"),
    ({"json": {"posts": [{"text": "a"}, "b"]}}, 400, "posts[1]"),
    ({"json": {"posts": [{"text": "a"}, {"text": "b", "image": 3}]}}, 400, "posts[1].image"),
    ({"json": {"posts": [{"text": "a"}], "text": "b"}}, 400, "text"),
    ({"content": b"x" * 70_000, "headers": {"content-type": "application/json"}}, 413, None),
    ({"content": b"text=a", "headers": {"content-type": "text/plain"}}, 415, None),
    ({"content": b"{\"text\": \"a\"}", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, None),
]


def _chunks(total: int):
    for _ in range(total // 10_000):
        yield b" " * 10_000


MULTIPART_BAD = [  # (data, files, status, param)
    ({"text": "a", "colour": "red"}, None, 400, "colour"),
    ({"text": "a"}, {"image": ("p.png", b"not a png", "image/png")}, 400, "image"),
    ({"text": "a"}, {"image": ("p.png", png(6, 90, 90), "image/png")}, 400, "image"),
    ({"text": "a", "max_new_tokens": "many"}, None, 400, "max_new_tokens"),
    ({"text": "a"}, {"image": ("p.png", b"x" * 70_000, "image/png")}, 413, None),
]


@pytest.mark.parametrize("kwargs,status,param", BAD + [({"content": _chunks(80_000)}, 413, None)]
                         + [({"data": d, "files": f}, st, pa) for d, f, st, pa in MULTIPART_BAD])
def test_bad_input_is_a_4xx_naming_the_field(server, kwargs, status, param):
    internal = metric(server.url, "mmkp_serve_errors_total", kind="internal")
    logged = len(server.logged.records)
    r = httpx.post(f"{server.url}/v1/keyphrases", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    if param:
        assert param in error["message"]
    assert metric(server.url, "mmkp_serve_errors_total", kind="internal") == internal
    assert server.logged.records[logged:] == [], "bad input must not be logged as a problem"


CHAT_BAD = [
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     400, "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
]


@pytest.mark.parametrize("body,status,param", CHAT_BAD)
def test_bad_chat_input_is_a_4xx_naming_the_field(server, body, status, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_routes_and_methods_are_json_errors(server):
    assert httpx.get(f"{server.url}/v1/nothing").status_code == 404
    r = httpx.get(f"{server.url}/v1/keyphrases")
    assert r.status_code == 405 and "error" in r.json()


def test_healthz_and_metrics(server):
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["family"] == "idefics3" and health["model"] == "tiny"
    assert health["max_batch"] == 16 and health["queue_depth"] == 0
    httpx.post(f"{server.url}/v1/keyphrases", json={"text": "count me", "max_new_tokens": 4}, timeout=30)
    r = httpx.get(f"{server.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("mmkp_serve_requests", "mmkp_serve_errors", "mmkp_serve_queue_depth",
                 "mmkp_serve_running_batch_size", "mmkp_serve_batch_size", "mmkp_serve_prefill_size",
                 "mmkp_serve_ttft_seconds",
                 "mmkp_serve_decode_step_seconds", "mmkp_serve_generated_tokens",
                 "mmkp_serve_model_seconds"):
        assert name in families, name
    assert families["mmkp_serve_ttft_seconds"].type == "histogram"
    assert metric(server.url, "mmkp_serve_requests_total", route="/v1/keyphrases", status="200") >= 1
    assert metric(server.url, "mmkp_serve_generated_tokens_total") >= 1
    assert metric(server.url, "mmkp_serve_ttft_seconds_count") >= 1
    # the worker's time in generation steps: positive, and within the steps' own timings' reach
    assert 0 < metric(server.url, "mmkp_serve_model_seconds_total") < 30


def test_cli_help_and_bad_flags():
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmkp_edge.cli.serve", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    out = run("--help")
    assert out.returncode == 0 and "curl" in out.stdout and "/v1/chat/completions" in out.stdout
    for args in (["--bundle", "/no/such/bundle"], ["--bundle", ".", "--max-batch", "0"], ["--bundel", "x"],
                 ["--bundle", ".", "--max-posts", "100", "--max-queue", "10"]):
        bad = run(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, (args, bad.stderr)
        assert bad.stderr.startswith("mmkp-serve: error:")


def test_a_port_in_use_is_one_line(bundle, server):
    port = server.url.rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "mmkp_edge.cli.serve", "--bundle", str(bundle), "--port", port],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().startswith("mmkp-serve: error: cannot listen")
    assert json.dumps(out.stderr).count("\\n") == 1
