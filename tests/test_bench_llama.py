"""llama.cpp as an mmkp-bench variant, on a tiny random-weight llama GGUF written in code
(tests/tiny_gguf.py) beside a tiny onnx.helper bundle (the prompt's reference): forced token counts
on every engine, batched == one-by-one greedy tokens, the runtime's exact prompt text, the stop
rule, `mmkp-bench gguf` copies that load and run, and the refusals. No timing thresholds."""

import json

import pytest

pytest.importorskip("llama_cpp", reason="the llama.cpp variant needs the llama extra: "
                                        "pip install 'mmkp-edge[llama]'")
pytest.importorskip("gguf", reason="the tiny test GGUF is written with the gguf package (train extra)")
pytest.importorskip("transformers", reason="the tiny GGUF's vocabulary is train/tiny.py's (train extra)")

from bench.bundle_variant import BundleVariant  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.gguf_model import file_type  # noqa: E402
from bench.llama_cpp_variant import LlamaCppVariant, _Row  # noqa: E402
from bench.workload import synthetic_posts  # noqa: E402
from mmkp_edge import prompt  # noqa: E402
from mmkp_edge.predictor import KeyphrasePredictor, text_prompt  # noqa: E402
from tiny_gguf import build_gguf  # noqa: E402
from tiny_onnx import build_bundle  # noqa: E402

N = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    return {"gguf": build_gguf(root / "tiny.F32.gguf"),
            "bundle": build_bundle(root / "bundle", seed=0, stop_bias=10.0)}


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    return synthetic_posts(3, seed=0, image_share=0.34, image_dir=tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def variant(files):
    return LlamaCppVariant(files["gguf"], "llama.cpp F32", 1, files["bundle"])


@pytest.mark.parametrize("size", [1, 3])
def test_forced_llama_rows_run_exactly_n_tokens(variant, posts, size):
    for i in range(0, len(posts), size):
        run = variant.run_batch(posts[i:i + size], "off", N, force=True)
        assert [len(o.tokens) for o in run.outputs] == [N] * len(posts[i:i + size])
        assert run.decode_steps == N - 1
        assert 0 < run.ttft_s <= min(run.finish_s) <= run.end_s


@pytest.mark.parametrize("force", [False, True])
def test_llama_batched_tokens_equal_one_by_one(variant, posts, force):
    one = [variant.run_batch([p], "auto", N, force).outputs[0].tokens for p in posts]
    many = [o.tokens for o in variant.run_batch(posts, "auto", N, force).outputs]
    assert many == one
    assert len({tuple(t) for t in one}) == len(posts)       # random weights: different outputs


def test_llama_gets_the_runtimes_prompt_text_and_counts_image_posts(files, variant, posts):
    predictor = KeyphrasePredictor.from_bundle(files["bundle"])
    text_only = [p for p in posts if p.image is None][0]
    ids = predictor.request(text_only, "off", N).input_ids
    runtime_text = predictor.bundle.encoder.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert text_prompt(variant.encoder, variant.manifest.model.max_context, text_only, "off", N) \
        == runtime_text
    assert runtime_text.endswith(prompt.ANSWER_OPEN)
    variant.run_batch(posts, "off", N)
    info = variant.describe()
    assert info["kind"] == "llama.cpp" and info["dtype"] == "F32"
    assert info["posts_text_only"] == sum(p.image is not None for p in posts) == 1
    assert info["prompt_tokens_mean"] > 10 and info["reference_prompt_tokens_mean"] > 10


def test_a_row_stops_at_an_end_token_or_when_its_text_closes_the_answer(variant):
    ids = variant.vocab.encode(f"a; b{prompt.ANSWER_CLOSE} more words", False)
    row = _Row(variant.vocab)
    for t in ids:
        row.add(t)
    closing = next(i for i in range(len(ids)) if prompt.ANSWER_CLOSE in variant.vocab.decode(ids[:i + 1]))
    assert row.stop == closing + 1 and row.answer == ids[:closing + 1] and row.tokens == ids
    eos = variant.vocab.encode("<end_of_utterance>", False)
    assert len(eos) == 1 and variant.vocab.is_eog(eos[0])
    row = _Row(variant.vocab)
    for t in ids[:1] + eos + ids[1:]:
        row.add(t)
    assert row.stop == 2


def test_forced_bundle_rows_run_exactly_n_tokens_and_keep_their_answers(files, posts):
    budget = 2 * N
    bundle = BundleVariant(files["bundle"], "ort fp32", threads=1)
    free = bundle.run_batch(posts, "auto", budget)
    forced = bundle.run_batch(posts, "auto", budget, force=True)
    assert [len(o.tokens) for o in forced.outputs] == [budget] * len(posts)
    assert min(len(o.tokens) for o in free.outputs) < budget  # stop_bias: a row stops early
    for a, b in zip(free.outputs, forced.outputs):
        assert b.tokens[:len(a.tokens)] == a.tokens           # forcing only runs on past the stop
        assert (a.keyphrases, a.thought) == (b.keyphrases, b.thought)


def test_gguf_command_writes_a_q8_0_copy_that_loads_and_runs(files, posts, tmp_path, capsys):
    assert main(["gguf", str(files["gguf"]), str(tmp_path), "--types", "q8_0", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (copy,) = out["files"]
    assert copy["type"] == "Q8_0" and copy["path"].endswith("tiny.Q8_0.gguf")
    assert 0 < copy["bytes"] < out["source_bytes"]
    assert file_type(copy["path"]) == "Q8_0"
    run = LlamaCppVariant(copy["path"], "llama.cpp Q8_0", 1, files["bundle"]).run_batch(
        posts, "off", N, force=True)
    assert [len(o.tokens) for o in run.outputs] == [N] * len(posts)


def test_run_times_llama_beside_the_bundle_with_forced_tokens(files, capsys):
    code = main([str(files["bundle"]), "--llama-cpp", str(files["gguf"]), "--batch-sizes", "1,3",
                 "--think", "off", "--posts-count", "3", "--max-new-tokens", str(N), "--force-tokens",
                 "--bandwidth-mb", "16", "--threads", "1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert [v["kind"] for v in report["variants"]] == ["onnxruntime", "llama.cpp"]
    assert report["variants"][1]["name"] == "llama.cpp F32" and report["config"]["timing"]["force_tokens"]
    for row in report["measurements"]:
        assert row["tokens_per_post"] == N and row["tokens"] == N * row["posts"]
        assert row["ttft_ms"] > 0 and row["decode_ms_per_step"] > 0 and row["floor_multiple"] > 0
    head = report["headline"]
    for size in (1, 3):
        for key in ("decode_ms_per_step", "ttft_ms"):
            (ratio,) = head[f"{key}_vs_llama.cpp F32_batch{size}"].values()
            assert ratio > 0
    assert [a["variant"] for a in report["agreement"]] == ["llama.cpp F32"]
    assert sum(line.startswith("llama.cpp F32") for line in lines) == 4   # variant, 2 rows, agreement
    assert any("exactly 6 new tokens (forced)" in line for line in lines)


def test_run_refuses_a_missing_gguf_in_one_line_before_timing(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(files["bundle"]), "--llama-cpp", f"{files['gguf']},{tmp_path / 'absent.gguf'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.gguf: GGUF file not found" in err[0]
