"""make-model and the torch baseline on the tiny shape: the student is exported through the export
package, and transformers `generate` (the baseline) produces exactly the bundle's greedy tokens on
the same workload — so the ORT/torch ratio compares like with like."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from bench.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "tiny"
    code = main(["make-model", "--shape", "tiny", "--precisions", "fp32", "--no-validate", str(out)])
    assert code == 0
    return out


def test_make_model_writes_student_and_bundle(made):
    assert (made / "student" / "config.json").is_file()
    manifest = json.loads((made / "fp32" / "manifest.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["quantization"] is None


def test_torch_baseline_matches_the_bundle_token_for_token(made, capsys):
    code = main([str(made / "fp32"), "--torch", str(made / "student"), "--batch-sizes", "1,3",
                 "--think", "off,auto", "--posts-count", "3", "--max-new-tokens", "8",
                 "--bandwidth-mb", "16", "--threads", "1", "--json-only"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = [v["kind"] for v in report["variants"]]
    assert kinds == ["onnxruntime", "torch"]
    torch_rows = [m for m in report["measurements"] if m["variant"] == "torch eager"]
    assert len(torch_rows) == 4
    for row in torch_rows:
        assert row["tokens_per_s"] * row["wall_s"] == pytest.approx(row["tokens"], rel=2e-3)
        assert row["ttft_ms"] > 0 and row["decode_ms_per_step"] > 0 and row["floor_multiple"] is None
    for a in report["agreement"]:
        assert a["variant"] == "torch eager"
        assert a["token_sequence_agreement"] == 1.0 and a["keyphrase_agreement"] == 1.0
    speedups = report["headline"]["speedup_vs_torch_end_to_end_batch1"]
    assert set(speedups) == {"ort fp32 think=off", "ort fp32 think=auto"}
    assert all(v > 0 for v in speedups.values())


def test_forced_tokens_torch_runs_the_whole_budget_with_the_bundles_tokens(made, capsys):
    code = main([str(made / "fp32"), "--torch", str(made / "student"), "--batch-sizes", "1,3",
                 "--think", "auto", "--posts-count", "3", "--max-new-tokens", "8", "--force-tokens",
                 "--bandwidth-mb", "16", "--threads", "1", "--json-only"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for row in report["measurements"]:
        assert row["tokens_per_post"] == 8 and row["tokens"] == 8 * row["posts"]
    (a,) = report["agreement"]                  # no end token at all: stops are not banned either
    assert a["token_sequence_agreement"] == 1.0 and a["keyphrase_agreement"] == 1.0
