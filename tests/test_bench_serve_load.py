"""bench/serve_load.py end to end on a tiny bundle: a real server, two concurrency levels, every
answer checked; and the check itself catches a lost, mixed-up or changed answer."""

import json
import sys

from bench.serve_load import Spec, check, histogram_delta, main
from tiny_onnx import build_bundle


def test_load_test_runs_and_passes(tmp_path, capsys, monkeypatch):
    bundle = build_bundle(tmp_path / "b", stop_bias=6.0)
    monkeypatch.setattr(sys, "argv", ["serve_load"])
    code = main(["--bundle", str(bundle), "--clients", "1,4", "--requests", "12", "--posts", "4",
                 "--max-new-tokens", "8", "--bad-share", "0.3", "--time-limit", "120"])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert code == 0 and report["passed"] and report["server_exit"] == 0
    assert [r["clients"] for r in report["levels"]] == [1, 4]
    for r in report["levels"]:
        assert r["ok"] + r["bad_refused"] == r["requests"] and r["bad_refused"] > 0
        assert r["lost"] == r["mixed"] == r["changed"] == r["duplicated"] == 0
        assert sum(r["batch_histogram"].values()) == r["decode_steps"] > 0
    assert "PASSED" in "\n".join(out[:-1])


def test_the_check_counts_what_went_wrong():
    ref = [{"keyphrases": ["a"], "rationale": None, "thought": False, "text": "<answer>a</answer>",
            "generated_tokens": 3, "finish": "stop"}]
    specs = [Spec("x", post=0), Spec("y", post=0), Spec("z", post=0), Spec("w", post=0),
             Spec("bad", raw=b"{", param=None)]
    good = lambda i, **kw: {"id": i, **ref[0], **kw}   # noqa: E731
    results = [{"spec": specs[0], "status": 200, "body": {"predictions": [good("x")]}, "retries": 1},
               {"spec": specs[1], "status": 200, "body": {"predictions": [good("x")]}, "retries": 0},
               {"spec": specs[2], "status": 200, "body": {"predictions": [good("z", text="?")]}, "retries": 0},
               {"spec": specs[4], "status": 500, "body": {"error": {"param": None}}, "retries": 0}]
    counts = check(specs, results, ref)
    assert counts == {"ok": 1, "lost": 1, "duplicated": 1, "mixed": 1, "changed": 1, "bad_refused": 0,
                      "bad_wrong": 1, "retries_429": 1}
    assert histogram_delta({"1.0": 2, "2.0": 2, "+Inf": 2}, {"1.0": 5, "2.0": 9, "+Inf": 9, "sum": 1, "count": 9}) == \
        {"<=1": 3, "<=2": 4}
