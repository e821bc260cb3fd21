"""The benchmark's pure parts: agreement, the floor's byte count, summarising timed batches, the
seeded workload, make-model's shapes, and the CLI's default command."""

import sys

import onnx
import pytest
from onnx import numpy_helper

from bench.agreement import compare
from bench.cli import main
from bench.floor import copy_bandwidth, decoder_weight_bytes, floor_ms, graph_weight_bytes
from bench.timing import BatchRun, PostOutput, summarise
from bench.workload import WorkloadConfig, load_workload
from tiny_onnx import build_bundle


def out(tokens, kps=(), thought=False):
    return PostOutput(tokens=list(tokens), keyphrases=list(kps), thought=thought)


def test_agreement_counts_stemmed_keyphrases_tokens_and_prefixes():
    ref = [out([1, 2, 3, 4], ["storms", "city"]), out([5, 6], ["cats"]), out([7], [])]
    got = [out([1, 2, 9, 9], ["storm", "city"]), out([5, 6], ["cats"]), out([8], [])]
    a = compare(ref, got)
    assert a["keyphrase_agreement"] == 1.0                    # "storms" and "storm" stem alike
    assert a["token_sequence_agreement"] == pytest.approx(1 / 3)
    assert a["token_prefix_agreement"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert a["posts_with_keyphrases"] == 2
    b = compare(ref, [out([1], ["city", "storm"]), ref[1], ref[2]])
    assert b["keyphrase_agreement"] == pytest.approx(2 / 3)  # order matters: ranked keyphrases
    with pytest.raises(ValueError):
        compare(ref, got[:2])


def test_floor_counts_every_decoder_initializer_byte(tmp_path):
    bundle = build_bundle(tmp_path / "b", layers=3, hidden=16)
    model = onnx.load(str(bundle / "decoder_model_merged.onnx"))
    expected = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert graph_weight_bytes(bundle / "decoder_model_merged.onnx") == expected
    assert decoder_weight_bytes(bundle) == expected
    bw = copy_bandwidth(buffer_mb=16, threads=2, passes=2)
    assert bw.bytes_per_s > 0 and bw.buffer_bytes == 16 << 20
    assert floor_ms(2 * expected, bw) == pytest.approx(2 * floor_ms(expected, bw))


def test_summarise_derives_consistent_figures():
    runs = [BatchRun(prep_s=0.1, ttft_s=0.3, end_s=1.3, decode_steps=4, finish_s=[0.8, 1.3],
                     outputs=[out([1, 2, 3]), out([1, 2, 3, 4, 5], thought=True)]),
            BatchRun(prep_s=0.1, ttft_s=0.2, end_s=0.7, decode_steps=1, finish_s=[0.7, 0.2],
                     outputs=[out([1, 2]), out([9])])]
    m = summarise("v", 2, "auto", runs, runs[-1].outputs)
    assert m.posts == 4 and m.tokens == 11 and m.wall_s == pytest.approx(2.0)
    assert m.tokens_per_s == pytest.approx(5.5) and m.posts_per_s == pytest.approx(2.0)
    assert m.ttft_ms == pytest.approx(250.0)
    assert m.decode_ms_per_step == pytest.approx(1e3 * 1.5 / 5)          # decode wall ÷ steps
    assert m.decode_ms_per_token == pytest.approx(1e3 * 1.5 / (11 - 4))  # first tokens are prefill's
    assert m.latency_ms["p50"] == pytest.approx(750.0) and m.latency_ms["mean"] == pytest.approx(750.0)
    assert m.think_rate == 0.0                                            # of the last pass
    assert m.prefill_share == pytest.approx(0.25)


def test_workload_is_a_pure_function_of_count_and_seed(tmp_path):
    a = load_workload(WorkloadConfig(posts=6, seed=3, image_share=0.5), tmp_path / "a")
    b = load_workload(WorkloadConfig(posts=6, seed=3, image_share=0.5), tmp_path / "b")
    assert [p.text for p in a] == [p.text for p in b]
    assert sum(p.image is not None for p in a) == 3
    for x, y in zip(a, b):
        assert (x.image is None) == (y.image is None)
        if x.image:
            assert open(x.image, "rb").read() == open(y.image, "rb").read()
    c = load_workload(WorkloadConfig(posts=6, seed=4), tmp_path / "c")
    assert [p.text for p in c] != [p.text for p in a]
    text_only = load_workload(WorkloadConfig(posts=4, image_share=0.0), tmp_path / "d")
    assert all(p.image is None for p in text_only)


def test_posts_file_replaces_the_synthetic_posts(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text('{"id": "x1", "text": "storm tonight", "image": null, "keyphrases": ["storm"]}\n'
                    '{"id": "x2", "text": "cake", "image": null, "keyphrases": []}\n')
    posts = load_workload(WorkloadConfig(posts=8, posts_file=str(path)), tmp_path / "img")
    assert [p.id for p in posts] == ["x1", "x2"]


def test_make_model_shape_has_smolvlm_dims_and_real_vocab():
    from bench.make_model import SMOLVLM_VOCAB, shape_config

    cfg = shape_config("smolvlm-256m", seed=5)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (576, 30, 9, 3)
    assert cfg.model_vocab_size == SMOLVLM_VOCAB and cfg.seed == 5
    assert cfg.image_seq_len == 64
    assert shape_config("tiny", 0).model_vocab_size is None


def test_help_lists_both_commands_and_make_model_refuses_a_full_folder(tmp_path, capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "make-model" in text and "run" in text
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["make-model", "--shape", "tiny", str(tmp_path / "full")])
    assert exc.value.code == 2
    assert "not empty" in capsys.readouterr().err


def test_bundle_bytes_counts_every_file(tmp_path):
    from bench.bundle_variant import bundle_bytes

    bundle = build_bundle(tmp_path / "b")
    assert bundle_bytes(bundle) == sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())


class _Scripted:
    """A variant whose passes take 3 s, 1 s, 2 s (one batch of 2 posts per pass)."""
    name = "scripted"

    def __init__(self):
        self.walls = iter([9.0, 3.0, 1.0, 2.0])             # warm-up, then three timed passes

    def run_batch(self, posts, think, max_new_tokens, force=False):
        wall = next(self.walls)
        return BatchRun(prep_s=0.0, ttft_s=wall / 2, end_s=wall, decode_steps=1,
                        finish_s=[wall] * len(posts), outputs=[out([1, 2]) for _ in posts])


@pytest.mark.parametrize("keep, posts, wall", [("all", 6, 6.0), ("best", 2, 1.0)])
def test_keep_best_summarises_only_the_fastest_pass(keep, posts, wall):
    from bench.timing import TimingConfig, measure
    from mmkp_edge.posts import Post

    cfg = TimingConfig(batch_sizes=(2,), think_modes=("off",), repeats=3, warmup=1, keep=keep)
    (m,) = measure(_Scripted(), [Post(id="a"), Post(id="b")], cfg)
    assert m.posts == posts and m.wall_s == pytest.approx(wall)
    assert m.tokens_per_s * m.wall_s == pytest.approx(m.tokens)


def test_a_missing_llama_extra_is_one_line_naming_the_install_before_timing(tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)          # `import llama_cpp` fails
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as exc:
        main([str(build_bundle(tmp_path / "b")), "--llama-cpp", str(tmp_path / "m.gguf")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmkp-bench: error: llama.cpp needs the llama extra (llama-cpp-python): "
                   "pip install 'mmkp-edge[llama]'"]                 # nothing timed before it
