"""MLX export (`mmkp-export --mlx`) and the MLX runtime backend, on the tiny student.

The contract: an unquantized MLX bundle reproduces the PyTorch student's greedy tokens exactly
(left-padded batch, with and without an image, every think mode), served by the same predictor,
prompt ids and parser as an ONNX bundle; our decoder loop over mlx-vlm's modules agrees with
mlx-vlm's own forward; 8- and 4-bit bundles keep the vision tower unquantized and report their
agreement with torch. Skipped when mlx-vlm is not installed (CI: pip install 'mlx-vlm[cpu]').
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mlx_vlm", reason="mlx-vlm not installed (pip install 'mmkp-edge[mlx]')")

from export.mlx_export import MlxExportConfig, export_mlx  # noqa: E402
from export.source import load_source  # noqa: E402
from mmkp_edge import prompt  # noqa: E402
from mmkp_edge.errors import InputError  # noqa: E402
from mmkp_edge.manifest import Manifest  # noqa: E402
from mmkp_edge.parser import parse  # noqa: E402
from mmkp_edge.phrases import stem_key  # noqa: E402
from mmkp_edge.posts import Post  # noqa: E402
from mmkp_edge.predictor import KeyphrasePredictor  # noqa: E402
from train.generation import generate_batch  # noqa: E402
from train.tiny import init_tiny  # noqa: E402

from students import train_briefly  # noqa: E402
from tolerance import student_atol  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="module")
def trained_dir(tiny_dir, tmp_path_factory):
    """The tiny student after 40 fine-tuning steps (see tests/students.py)."""
    return train_briefly(tiny_dir, tmp_path_factory.mktemp("probe"),
                         tmp_path_factory.mktemp("trained") / "student")


@pytest.fixture(scope="module")
def fp32(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlx") / "fp32"
    return export_mlx(MlxExportConfig(source=str(tiny_dir), out=str(out)))


def _two_posts(folder):
    image = folder / "storm.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    return [Post(id="img", text="Storm clouds over the lake at sunset", image=str(image)),
            Post(id="txt", text="Election night: the vote count goes on", ocr="vote today")]


def test_unquantized_export_passes_its_exact_check(fp32):
    assert fp32.ok and fp32.status == "passed"
    greedy = fp32.validation["greedy"]
    assert greedy["identical"] == greedy["posts"] and 0 < greedy["with_image"] < greedy["posts"]
    manifest = Manifest.load(fp32.bundle)
    assert manifest.backend == "mlx" and manifest.graphs == {} and manifest.quantization is None
    assert manifest.prompt.hash == prompt.PROMPT_HASH
    assert "model.safetensors" in manifest.files and "tokenizer.json" in manifest.files


@pytest.mark.parametrize("think", ["off", "auto", "on"])
def test_mlx_predictor_reproduces_torch_greedy(fp32, tiny_dir, tmp_path, think):
    posts = _two_posts(tmp_path)
    src = load_source(str(tiny_dir))
    reference = generate_batch(src.model, src.processor, posts, think=think, max_new_tokens=20)
    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    preds = predictor.predict(posts, think=think, max_new_tokens=20, batch_size=2)
    stops = {*predictor.manifest.special_tokens.eos, predictor.manifest.special_tokens.answer_close}
    for ref, got in zip(reference, preds):
        assert got.error is None
        cut = next((i for i, t in enumerate(got.token_ids) if t in stops), len(got.token_ids))
        assert list(ref.token_ids[:cut]) == list(got.token_ids[:cut])
        assert [stem_key(k) for k in parse(ref.text).keyphrases] == [stem_key(k) for k in got.keyphrases]
    one_by_one = [predictor.predict([p], think=think, max_new_tokens=20)[0] for p in posts]
    assert [p.token_ids for p in one_by_one] == [p.token_ids for p in preds]


def test_posts_joining_a_running_mlx_batch_get_their_one_by_one_tokens(fp32, tmp_path):
    """Continuous batching (Generator.add; MlxKVCache.joined pads the shorter past) on MLX."""
    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    posts = _two_posts(tmp_path) * 2
    single = [list(predictor.predict([p], max_new_tokens=12)[0].token_ids) for p in posts[:2]] * 2
    gen = predictor.generator([], "auto", 12)
    index, joined_running = {}, 0
    for joining in ([1], [0], [], [3, 2]):
        joined_running += bool(joining) and bool(gen.running.any())
        index.update(zip(joining, gen.add([predictor.request(posts[i]) for i in joining])))
        gen.step()
    gen.run()
    assert [gen.outputs[index[p]].tokens for p in range(4)] == single
    assert joined_running >= 2, "precondition: posts joined while others were decoding"


def test_decoder_loop_matches_mlx_vlm_forward(fp32, tmp_path):
    """MlxGraphs.decode (per-row positions, padding mask) == mlx-vlm's own Model call on one
    unpadded prompt with an image — also proves the converted config's rope_theta is right."""
    import mlx.core as mx

    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    graphs = predictor.bundle.graphs
    req = predictor.request(_two_posts(tmp_path)[0], think="off")
    ids = req.input_ids[None]                                                  # (1, T)
    ours, _ = graphs.decode(_embeds(graphs, ids, req.pixel_values, predictor), np.ones_like(ids),
                            np.arange(ids.shape[1])[None], graphs.empty_cache(1))
    theirs = graphs.net(mx.array(ids.astype(np.int32)), mx.array(req.pixel_values[None])).logits
    # the same modules driven two ways (our cache and masks vs mlx-vlm's call): rounding only,
    # bounded like two evaluations of the student (tests/tolerance.py)
    ref = np.asarray(theirs[0, -1])
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(predictor.manifest.source)            # the tiny student
    np.testing.assert_allclose(ours[0], ref, rtol=0, atol=student_atol(ref, config))


def _embeds(graphs, ids, pixels, predictor):
    embeds = graphs.embed(ids)                                                 # (1, T, D)
    slots = ids == predictor.manifest.special_tokens.image
    embeds[slots] = graphs.vision(pixels).reshape(-1, embeds.shape[-1])
    return embeds


def test_predict_cli_serves_an_mlx_bundle(fp32, capsys):
    from mmkp_edge.cli.predict import main

    code = main(["--bundle", fp32.bundle, "--no-image", "storm over the city", "--think", "off",
                 "--json", "--max-new-tokens", "8"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and out["text"].startswith(prompt.ANSWER_OPEN)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_exports_keep_vision_and_pass_the_gate_on_a_trained_student(trained_dir, tmp_path,
                                                                              bits):
    report = export_mlx(MlxExportConfig(source=str(trained_dir), out=str(tmp_path / f"q{bits}"),
                                        q_bits=bits))
    manifest = Manifest.load(report.bundle)
    q = manifest.quantization
    assert q["method"] == "mlx-affine" and q["bits"] == bits and q["quantized_modules"] > 0
    assert not q["vision_quantized"]
    agreement = report.validation["agreement"]
    print(f"mlx int{bits} (trained tiny student): tokens {report.validation['greedy']['identical']}"
          f"/{agreement['posts']} identical, keyphrase agreement {agreement['keyphrase_agreement']:.3f}")
    assert report.status == "passed" and agreement["keyphrase_agreement"] >= 0.95
    assert report.total_bytes < export_size(trained_dir)


def export_size(checkpoint) -> int:
    return sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))


def test_int4_gate_fails_on_a_chaotic_random_student(tiny_dir, tmp_path, capsys):
    """A random student's argmax flips under 4-bit rounding: the gate fails, the bundle is still
    written (marked failed) and the command exits 1."""
    from export.cli import main

    out = tmp_path / "q4"
    assert main([str(tiny_dir), "-o", str(out), "--mlx", "--q-bits", "4", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "failed" and report["precision"] == "mlx-int4"
    assert Manifest.load(out).validation["status"] == "failed"


def test_mlx_bundle_without_mlx_vlm_is_one_line(fp32, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_vlm", None)       # import mlx_vlm now raises ImportError
    with pytest.raises(InputError, match=r"mmkp-edge\[mlx\]"):
        KeyphrasePredictor.from_bundle(fp32.bundle)


def test_cli_flag_combinations_are_usage_errors(tiny_dir, tmp_path):
    from export.cli import main

    for flags in (["--mlx", "--int8"], ["--q-bits", "8"]):
        with pytest.raises(SystemExit) as exc:
            main([str(tiny_dir), "-o", str(tmp_path / "x"), *flags])
        assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_refusals(tiny_dir, tmp_path):
    with pytest.raises(InputError, match="q-bits"):
        MlxExportConfig(source=str(tiny_dir), out=str(tmp_path / "x"), q_bits=3).check()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        MlxExportConfig(source=str(tiny_dir), out=str(tmp_path / "taken")).check()


def test_importing_the_backend_is_cheap():
    code = ("import sys, mmkp_edge.mlx_backend\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mlx', 'mlx_vlm', 'torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_an_mlx_bundle_leaves_transformers_auto_processor_alone(fp32, tiny_dir):
    """mlx-vlm patches AutoProcessor.from_pretrained process-wide when its Idefics3 module is
    imported; our backend undoes that, so a student loaded afterwards keeps its chat template."""
    from transformers import AutoProcessor

    KeyphrasePredictor.from_bundle(fp32.bundle)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert processor.chat_template is not None
