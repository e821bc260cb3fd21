"""The openai teacher end to end against a real HTTP server on 127.0.0.1 (tests/cot_server.py):
right records kept / rejected, retries on 429 (honouring Retry-After) / 5xx / timeouts / malformed
bodies and none on other 4xx, failures recorded without stopping the run, fatal answers (bad key,
wrong model, no server) stopping it with one clear line, and the API key never written anywhere."""

import json

import pytest
from PIL import Image

from cot_server import MALFORMED, FakeServer, answer, hang, ok, status
from train.cot import load_rationales
from train.cot.command import main
from train.cot.records import read_records

KEY_ENV = "MMKP_TEST_TEACHER_KEY"
SECRET = "sk-test-9f8e7d6c5b4a-SECRET"
FAST = ["--set", "timeout=0.5", "--set", "retries=2", "--set", "backoff_base=0.01",
        "--set", "backoff_max=2"]


def write_posts(tmp_path, specs) -> str:
    """specs: (id, keyphrases, image path or None); each post's text starts with its id."""
    path = tmp_path / "posts.jsonl"
    with open(path, "w") as fh:
        for post_id, kps, image in specs:
            fh.write(json.dumps({"id": post_id, "text": f"{post_id} a day at the beach",
                                 "image": image, "keyphrases": kps}) + "\n")
    return str(path)


def cli(server, posts, out, *extra, key_env="") -> list[str]:
    return ["--posts", posts, "-o", str(out), "--base-url", server.url, "--model", server.model,
            "--api-key-env", key_env, "--concurrency", "4", *FAST, *extra]


def by_id(path) -> dict:
    records = read_records(path)
    assert len({r["id"] for r in records}) == len(records)
    return {r["id"]: r for r in records}


@pytest.fixture
def images(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return str(good), str(bad)


def test_records_retries_and_failures(tmp_path, images, capsys):
    good, bad = images
    gold = ["beach", "summer"]
    right = answer("The text is about a beach day; the red image suggests summer.", gold)
    specs = [(f"p{i}", gold, None) for i in range(10)] + [("p10", gold, bad), ("p11", gold, good)]
    with FakeServer() as server:
        server.scripts = {
            "p0": [ok(right)],
            "p1": [ok(answer("Beach, sun and a party.", gold + ["party"]))],    # extra phrase
            "p2": [status(429, {"Retry-After": "0.3"}), ok(right)],
            "p3": [status(500), ok(right)],
            "p4": [hang(2.0), ok(right)],                                     # past timeout=0.5
            "p5": [MALFORMED],
            "p6": [status(400, body='{"error": {"message": "context too long"}}')],
            "p7": [status(503)],
            "p8": [ok("Beach and summer, obviously.")],                       # no answer span
            "p9": [ok(answer("Sunny sand.", ["#Beach", "#Summer"]))],        # same, as hashtags
            "p10": [ok(right)],
            "p11": [ok(right)],
        }
        code = main(cli(server, write_posts(tmp_path, specs), tmp_path / "r.jsonl",
                        "--price-in", "2.5", "--price-out", "10"))
        assert code == 0
        counts = {p: len(server.requests_for(p)) for p in server.scripts}
        p2 = server.requests_for("p2")
        images_sent = {r.post: r.image for r in server.log}
    out, err = capsys.readouterr()
    recs = by_id(tmp_path / "r.jsonl")
    assert set(recs) == {s[0] for s in specs}

    kept = {i for i, r in recs.items() if r["kept"]}
    assert kept == {"p0", "p2", "p3", "p4", "p9", "p10", "p11"}
    assert recs["p0"]["answer"] == ["beach", "summer"] and recs["p0"]["reason"] == "exact"
    assert recs["p0"]["rationale"].startswith("The text is about a beach day")
    assert recs["p1"]["reason"] == "mismatch" and "extra: party" in recs["p1"]["detail"]
    assert recs["p8"]["reason"] == "no-answer" and recs["p8"]["rationale"] is None
    for failed in ("p5", "p6", "p7"):
        assert recs[failed]["reason"] == "failed" and not recs[failed]["kept"]
    assert "malformed" in recs["p5"]["error"]
    assert recs["p6"]["error"].startswith("HTTP 400") and "context too long" in recs["p6"]["error"]
    assert "HTTP 503" in recs["p7"]["error"]

    # Retries: once after 429 / 500 / timeout, up to 1 + retries on persistent retryable errors,
    # never on a 400; attempts recorded; the 429's Retry-After was waited out.
    assert counts == {"p0": 1, "p1": 1, "p2": 2, "p3": 2, "p4": 2, "p5": 3, "p6": 1, "p7": 3,
                      "p8": 1, "p9": 1, "p10": 1, "p11": 1}
    assert {p: recs[p]["attempts"] for p in counts} == counts
    assert p2[1].time - p2[0].time >= 0.3

    # Images: the undecodable one made its post text-only (recorded); the good one was sent.
    assert images_sent["p11"] and not images_sent["p10"] and not images_sent["p0"]
    assert recs["p10"]["image_problem"].startswith("unreadable image")
    assert recs["p11"]["image_problem"] is None

    # Every record carries its provenance and usage.
    for r in recs.values():
        assert r["teacher"] == "openai" and r["model"] == "teacher-x"
        assert r["template_version"].startswith("cot-v1-") and r["mode"] == "gold"
    assert recs["p0"]["usage"]["prompt_tokens"] > 0 and recs["p5"]["usage"]["prompt_tokens"] == 0

    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["processed"], summary["kept"], summary["failed"], summary["rejected"]) == \
        (12, 7, 3, 2)
    assert summary["reasons"] == {"exact": 7, "failed": 3, "mismatch": 1, "no-answer": 1}
    assert summary["kept_rate"] == round(7 / 12, 4) and summary["cost_usd"] > 0
    assert summary["tokens"]["total"] == sum(
        r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in recs.values())
    assert "12/12 done · 7 kept · 3 failed" in err and "kept 7 (58.3%)" in err
    assert load_rationales(tmp_path / "r.jsonl").keys() == kept


def test_concurrency_bounds_requests_in_flight(tmp_path):
    posts = write_posts(tmp_path, [(f"p{i}", ["beach"], None) for i in range(9)])
    with FakeServer(delay=0.1) as server:
        server.scripts = {f"p{i}": [ok(answer("r", ["beach"]))] for i in range(9)}
        args = cli(server, posts, tmp_path / "r.jsonl")
        args[args.index("--concurrency") + 1] = "3"
        assert main(args) == 0
        assert 2 <= server.max_in_flight <= 3
    assert len(read_records(tmp_path / "r.jsonl")) == 9


def test_rerun_skips_done_and_retry_failed_reasks_only_failures(tmp_path):
    gold = ["beach"]
    specs = [(f"p{i}", gold, None) for i in range(4)]
    posts, out = write_posts(tmp_path, specs), tmp_path / "r.jsonl"
    with FakeServer() as server:
        server.scripts = {"p0": [ok(answer("r", gold))], "p1": [status(502)],
                          "p2": [ok(answer("r", ["other"]))], "p3": [ok(answer("r", gold))]}
        assert main(cli(server, posts, out)) == 0
        first = len(server.log)
        assert main(cli(server, posts, out)) == 0              # nothing left to do
        assert len(server.log) == first
        server.scripts["p1"] = [ok(answer("fixed", gold))]
        server._counts.clear()
        assert main(cli(server, posts, out, "--retry-failed")) == 0
        assert [r.post for r in server.log[first:]] == ["p1"]  # rejected p2 is not re-asked
    records = read_records(out)
    assert [r["id"] for r in records].count("p1") == 2
    assert load_rationales(out) == {"p0": "r", "p1": "fixed", "p3": "r"}
    assert load_rationales(out, kept_only=False) == {"p0": "r", "p1": "fixed", "p2": "r", "p3": "r"}


def test_samples_draw_until_one_passes(tmp_path):
    gold = ["beach", "sun"]
    posts = write_posts(tmp_path, [("p0", gold, None), ("p1", gold, None)])
    wrong, right = ok(answer("no", ["cat"])), ok(answer("yes", gold))
    with FakeServer() as server:
        server.scripts = {"p0": [wrong, wrong, right, right], "p1": [wrong]}
        assert main(cli(server, posts, tmp_path / "a.jsonl", "--samples", "4",
                        "--set", "temperature=0.7")) == 0
        assert len(server.requests_for("p0")) == 3 and len(server.requests_for("p1")) == 4
        assert server.log[0].body["temperature"] == 0.7
        server.scripts["p0"] = [right, wrong, right]
        server._counts.clear()
        assert main(cli(server, posts, tmp_path / "b.jsonl", "--samples", "3",
                        "--set", "temperature=0.7", "--set", "keep_all_samples=true")) == 0
    a, b = by_id(tmp_path / "a.jsonl"), by_id(tmp_path / "b.jsonl")
    assert a["p0"]["kept"] and a["p0"]["samples"] == 3 and a["p0"]["attempts"] == 3
    assert not a["p1"]["kept"] and a["p1"]["samples"] == 4 and a["p1"]["reason"] == "mismatch"
    assert b["p0"]["kept"] and b["p0"]["samples"] == 3 and b["p0"]["extra_rationales"] == ["yes"]


def test_no_gold_mode_hides_the_gold_and_still_filters(tmp_path):
    posts = write_posts(tmp_path, [("p0", ["zebra crossing"], None)])
    with FakeServer() as server:
        server.scripts = {"p0": [ok(answer("I see stripes.", ["zebra crossing"]))]}
        assert main(cli(server, posts, tmp_path / "r.jsonl", "--no-gold")) == 0
        prompt = server.log[0].prompt
    assert "zebra" not in prompt and "Post text: p0" in prompt
    rec = by_id(tmp_path / "r.jsonl")["p0"]
    assert rec["kept"] and rec["mode"] == "predict"


def test_a_streak_of_failed_posts_stops_the_run(tmp_path, capsys):
    posts = write_posts(tmp_path, [(f"p{i}", ["beach"], None) for i in range(12)])
    bad = status(400, body='{"error": {"message": "Unsupported parameter: max_tokens"}}')
    with FakeServer() as server, pytest.raises(SystemExit) as exit_info:
        server.scripts = {f"p{i}": [bad] for i in range(12)}
        main(cli(server, posts, tmp_path / "r.jsonl", "--set", "max_consecutive_failures=3"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "3 posts in a row failed (last: HTTP 400: Unsupported parameter: max_tokens)" in err
    records = read_records(tmp_path / "r.jsonl")
    assert 3 <= len(records) < 12 and all(r["reason"] == "failed" for r in records)


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    posts = write_posts(tmp_path, [("p0", ["beach"], None), ("p1", ["beach"], None)])
    with FakeServer(key=SECRET) as server:
        server.scripts = {"p0": [ok(answer("r", ["beach"]))], "p1": [status(500)]}
        assert main(cli(server, posts, tmp_path / "r.jsonl", key_env=KEY_ENV)) == 0
        assert {r.auth for r in server.log} == {f"Bearer {SECRET}"}
    out, err = capsys.readouterr()
    assert SECRET not in out + err + (tmp_path / "r.jsonl").read_text()

    # A server that refuses the key and echoes it back: the run stops, the key is scrubbed.
    monkeypatch.setenv(KEY_ENV, SECRET + "-wrong")
    with FakeServer(key=SECRET) as server, pytest.raises(SystemExit) as exit_info:
        main(cli(server, posts, tmp_path / "s.jsonl", key_env=KEY_ENV))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "refused the key in $" + KEY_ENV in err and "HTTP 401" in err and "***" in err
    text = out + err + (tmp_path / "s.jsonl").read_text()
    assert SECRET not in text


def test_missing_api_key_fails_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    posts = write_posts(tmp_path, [("p0", ["beach"], None)])
    with FakeServer() as server, pytest.raises(SystemExit) as exit_info:
        main(cli(server, posts, tmp_path / "r.jsonl", key_env=KEY_ENV))
    assert exit_info.value.code == 2 and not server.log
    err = capsys.readouterr().err
    assert f"environment variable {KEY_ENV} is not set" in err and "Traceback" not in err


def test_wrong_model_stops_with_a_clear_message(tmp_path, capsys):
    posts = write_posts(tmp_path, [(f"p{i}", ["beach"], None) for i in range(6)])
    with FakeServer(model="served-model") as server:
        with pytest.raises(SystemExit) as exit_info:
            main(["--posts", posts, "-o", str(tmp_path / "r.jsonl"), "--base-url", server.url,
                  "--model", "gpt-typo", "--api-key-env", "", "--concurrency", "2", *FAST])
        assert len(server.log) <= 2     # stopped at the first answer: no retries, no more posts
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "HTTP 404" in err and "'gpt-typo'" in err and "--model" in err
    assert "does not exist" in err and "Traceback" not in err


def test_unreachable_server_stops_with_a_clear_message(tmp_path, capsys):
    import socket
    with socket.socket() as s:           # a port that was free a moment ago and is now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    posts = write_posts(tmp_path, [("p0", ["beach"], None)])
    with pytest.raises(SystemExit) as exit_info:
        main(["--posts", posts, "-o", str(tmp_path / "r.jsonl"), "--api-key-env", "",
              "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", *FAST])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"cannot connect to http://127.0.0.1:{port}/v1" in err and "--base-url" in err
    assert "re-run the same command to continue" in err


def test_duplicate_post_ids_are_refused_with_file_and_line(tmp_path, capsys):
    posts = write_posts(tmp_path, [("p0", ["a"], None), ("p1", ["b"], None), ("p0", ["c"], None)])
    with pytest.raises(SystemExit) as exit_info:
        main(["--posts", posts, "-o", str(tmp_path / "r.jsonl"), "--api-key-env", "",
              "--base-url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "posts.jsonl:3: duplicate id 'p0' (first on line 1)" in err
    assert not (tmp_path / "r.jsonl").exists()
