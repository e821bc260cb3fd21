"""`mmkp-bench` end to end on tiny onnx.helper bundles: the JSON line's schema, and figures that are
positive and consistent with each other (tokens/s × wall = tokens, …). No timing thresholds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from tiny_onnx import build_bundle, rewrite_manifest

MAX_NEW = 6
POSTS = 5

TOP_KEYS = {"benchmark", "machine", "config", "workload", "bandwidth", "variants", "measurements",
            "agreement", "headline", "units"}
MEASUREMENT_KEYS = {"variant", "batch_size", "think", "posts", "tokens", "wall_s", "ttft_ms",
                    "prefill_share", "decode_ms_per_step", "decode_ms_per_token", "latency_ms",
                    "posts_per_s", "tokens_per_s", "tokens_per_post", "think_rate", "floor_multiple"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return (build_bundle(root / "a", seed=0, stop_bias=3.0, think_bias=2.0),
            build_bundle(root / "b", seed=1, stop_bias=3.0))


@pytest.fixture(scope="module")
def report(bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    args = [str(bundles[0]), str(bundles[1]), "--batch-sizes", "1,2", "--think", "off,auto",
            "--posts-count", str(POSTS), "--max-new-tokens", str(MAX_NEW), "--repeats", "2",
            "--bandwidth-mb", "16", "--plot", str(out / "plot.png"), "--threads", "1",
            "--markdown", str(out / "results.md")]
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    data = json.loads(lines[-1])
    data["_stdout"], data["_stderr"], data["_out"] = proc.stdout, proc.stderr, out
    return data


def test_json_line_has_the_schema(report):
    assert TOP_KEYS <= set(report)
    m = report["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and {"avx2", "avx512_vnni"} <= set(m["isa"])
    assert m["versions"]["onnxruntime"]
    assert len(report["variants"]) == 2 and report["variants"][0]["kind"] == "onnxruntime"
    assert len(report["measurements"]) == 2 * 2 * 2          # variants × batch sizes × think modes
    for row in report["measurements"]:
        assert MEASUREMENT_KEYS <= set(row)
        assert set(row["latency_ms"]) == {"p50", "p90", "p99", "mean"}
    assert {a["think"] for a in report["agreement"]} == {"off", "auto"}


def test_figures_are_positive_and_consistent(report):
    for row in report["measurements"]:
        assert row["posts"] == POSTS * 2                      # workload × repeats
        for key in ("wall_s", "ttft_ms", "decode_ms_per_step", "posts_per_s", "tokens_per_s",
                    "floor_multiple"):
            assert row[key] > 0, key
        assert row["tokens_per_s"] * row["wall_s"] == pytest.approx(row["tokens"], rel=2e-3)
        assert row["posts_per_s"] * row["wall_s"] == pytest.approx(row["posts"], rel=2e-3)
        assert row["tokens_per_post"] * row["posts"] == pytest.approx(row["tokens"], rel=2e-3)
        assert 1 <= row["tokens_per_post"] <= MAX_NEW
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert row["ttft_ms"] <= lat["p99"] + 1e-6           # a post ends after its first token
        assert 0 < row["prefill_share"] <= 1
        if row["think"] == "off":
            assert row["think_rate"] == 0                     # <think> is masked in off mode
    for v in report["variants"]:
        files = [p for p in Path(v["path"]).iterdir() if p.is_file()]
        assert v["bundle_bytes"] == sum(p.stat().st_size for p in files)
        assert 0 < v["decoder_weight_bytes"] < v["bundle_bytes"]
        assert v["floor_ms_per_step"] > 0 and v["peak_rss_mb"] >= v["rss_before_load_mb"] > 0
        growth = v["peak_rss_mb"] - v["rss_before_load_mb"]
        assert v["peak_rss_growth_mb"] == pytest.approx(growth, abs=0.2)
    assert report["bandwidth"]["copy_gb_per_s"] > 0


def test_agreement_and_headline(report):
    for a in report["agreement"]:
        assert a["reference"] == report["variants"][0]["name"]
        assert 0 <= a["keyphrase_agreement"] <= 1 and 0 <= a["token_prefix_agreement"] <= 1
        assert a["token_sequence_agreement"] <= a["token_prefix_agreement"] + 1e-9
    # two different random models disagree somewhere
    assert min(a["token_sequence_agreement"] for a in report["agreement"]) < 1
    head = report["headline"]
    expected = {f"{v['name']} think={t}" for v in report["variants"] for t in ("off", "auto")}
    assert set(head["throughput_batch2_over_batch1"]) == expected
    assert 0 < head["bundle_bytes_ratio_vs_first"][report["variants"][1]["name"]]


def test_people_see_tables_and_a_plot_progress_goes_to_stderr(report):
    out = report["_stdout"].splitlines()
    assert len(out) > 5 and any("decode ms/step" in line for line in out)
    assert not out[-2].startswith("{")                        # exactly one JSON line, the last
    assert "ort fp32" in report["_stderr"] and "tokens/s" in report["_stderr"]
    assert (report["_out"] / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report["_out"] / "results.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ort")]
    assert len(rows) == 2 + len(report["measurements"])       # variant table + measurement table


def test_same_bundle_twice_agrees_fully_and_json_only(bundles, capsys):
    code = main([str(bundles[0]), str(bundles[0]), "--batch-sizes", "2", "--think", "auto",
                 "--posts-count", "3", "--max-new-tokens", "4", "--bandwidth-mb", "16", "--json-only"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    data = json.loads(out[0])
    names = [v["name"] for v in data["variants"]]
    assert len(set(names)) == 2                                # labels made unique
    (row,) = data["agreement"]
    assert row["keyphrase_agreement"] == row["token_sequence_agreement"] == 1.0


@pytest.mark.parametrize("args, needle", [
    (["{tmp}"], "not a bundle folder"),
    (["{bundle}", "--batch-sizes", "1,x"], "comma-separated integers"),
    (["{bundle}", "--think", "maybe"], "think modes"),
    (["{bundle}", "--posts", "{tmp}/missing.jsonl"], "posts file not found"),
    (["{bundle}", "--max-new-tokens", "0"], "max new tokens"),
    (["{bundle}", "--torch", "{tmp}/no/such/student"], "no such checkpoint folder"),
])
def test_bad_input_is_one_line_and_exit_2(bundles, tmp_path, capsys, args, needle):
    argv = [a.format(tmp=tmp_path, bundle=bundles[0]) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--bandwidth-mb", "16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkp-bench: error:") and needle in err[0]


def test_benchmarking_bundles_never_imports_torch(bundles):
    code = ("import sys\nfrom bench.cli import main\n"
            f"main([{str(bundles[0])!r}, '--batch-sizes', '1', '--think', 'off', '--posts-count', '2', "
            "'--max-new-tokens', '2', '--bandwidth-mb', '16', '--json-only'])\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "CLEAN"


def test_a_bundle_that_failed_validation_needs_no_verify(tmp_path, capsys):
    bundle = build_bundle(tmp_path / "failed", stop_bias=3.0)
    rewrite_manifest(bundle, validation={"status": "failed"})
    args = [str(bundle), "--batch-sizes", "1", "--think", "off", "--posts-count", "2",
            "--max-new-tokens", "2", "--bandwidth-mb", "16", "--json-only"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and "--no-verify" in capsys.readouterr().err
    assert main(args + ["--no-verify"]) == 0
    assert json.loads(capsys.readouterr().out)["measurements"][0]["tokens"] > 0
