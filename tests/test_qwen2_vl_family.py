"""Qwen2-VL as a full family, end to end on a tiny random Qwen2-VL built in code
(`train.tiny.init_tiny(..., family="qwen2_vl")`): LoRA, an sft stage and Dynamic CoT chained from it
in training, mmkp-bench on the bundle, export with
its own checks (ORT vs torch logits, runtime vs torch greedy) and int8, then the torch-free runtime
(KeyphrasePredictor, mmkp-predict) on left-padded batches mixing text-only posts and images of
different sizes — so each row has its own number of image tokens and its own M-RoPE rope delta."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmkp_edge import prompt
from mmkp_edge.generate import Generator
from mmkp_edge.graph_io import IMAGE_GRID_THW, POSITION_IDS
from mmkp_edge.manifest import Manifest
from mmkp_edge.posts import Post, read_jsonl
from mmkp_edge.predictor import KeyphrasePredictor

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from export import ExportConfig, export_bundle  # noqa: E402
from export.validate import ValidateConfig, check_greedy  # noqa: E402
from train.tiny import init_tiny  # noqa: E402

IMAGE_SIZES = ((40, 56), (90, 33), (16, 16), (70, 70))   # (w, h): 35, 24, 4, 36 image tokens
TEXTS = ("storm over the city tonight", "happy birthday to my best friend", "cute dog in the park",
         "coffee and cake", "new music video out today", "great game tonight what a win")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # this module's torch runs; restored for the rest
    yield init_tiny(tmp_path_factory.mktemp("qwen2vl") / "tiny", family="qwen2_vl")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2vl-posts")
    rng = np.random.default_rng(0)
    out = []
    for i, text in enumerate(TEXTS):
        image = None
        if i < len(IMAGE_SIZES):
            w, h = IMAGE_SIZES[i]
            image = str(folder / f"p{i}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
        out.append(Post(id=f"p{i}", text=text, image=image))
    return out[::-1]                       # text-only rows first: images are not all at the front


@pytest.fixture(scope="module")
def fp32(tiny, tmp_path_factory):
    report = export_bundle(ExportConfig(source=str(tiny),
                                        out=str(tmp_path_factory.mktemp("qwen2vl-b") / "fp32")))
    assert report.ok, json.dumps(report.validation)[:2000]
    return report


def test_bundle_records_the_family_and_passes_exports_checks(fp32):
    manifest = Manifest.load(fp32.bundle)
    assert manifest.family == "qwen2_vl" and manifest.model.decoder == "traced"   # no fused M-RoPE
    image = manifest.image
    assert (image.patch_size, image.merge_size, image.temporal_patch_size) == (4, 2, 2)
    assert image.token_string == "<|vision_start|>{image_tokens}<|vision_end|>"
    assert image.image_token == "<|image_pad|>" and image.tokens_per_image == 49
    v = fp32.validation
    assert v["logits"]["passed"] and v["greedy"]["passed"] and v["greedy"]["with_image"] > 0
    graphs = KeyphrasePredictor.from_bundle(fp32.bundle).bundle.graphs
    assert IMAGE_GRID_THW in {i.name for i in graphs.sessions["vision_encoder"].get_inputs()}
    pos = next(i for i in graphs.sessions["decoder_model_merged"].get_inputs() if i.name == POSITION_IDS)
    assert len(pos.shape) == 3 and pos.shape[0] == 3


def test_runtime_greedy_equals_torch_on_a_mixed_left_padded_batch(fp32, tiny, posts):
    from export.source import load_source

    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    image_tokens = [int((predictor.request(p).input_ids == predictor.manifest.special_tokens.image)
                        .sum()) for p in posts if p.image]
    assert len(set(image_tokens)) == len(IMAGE_SIZES)          # every image its own token count
    src = load_source(str(tiny))
    for think in ("auto", "off"):
        result = check_greedy(src.model, src.processor, fp32.bundle, posts,
                              ValidateConfig(new_tokens=12, think=think))
        assert result["passed"], result["mismatches"]
        assert result["with_image"] == len(IMAGE_SIZES) and result["posts"] == len(posts)


def test_vision_per_image_equals_one_call_over_all_images_and_refuses_a_grid_mismatch(fp32, posts):
    """Graphs.vision calls the graph once per image; the graph's own block-diagonal mask over all
    images at once is the reference (same features up to summation order in fp32 attention)."""
    from tolerance import fp32_atol

    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    graphs = predictor.bundle.graphs
    prepared = [predictor.bundle.family.preprocess(Image.open(p.image).convert("RGB"))
                for p in posts if p.image]
    pixels = np.concatenate([x.pixel_values for x in prepared])            # (ΣP, C·t·p·p)
    grids = [x.grid for x in prepared]
    once = graphs.sessions["vision_encoder"].run(None, {
        "pixel_values": pixels, IMAGE_GRID_THW: np.asarray(grids, dtype=np.int64)})[0]
    split = graphs.vision(pixels, grids)                                    # (Σ tokens, D)
    assert split.shape == once.shape
    # the longest sum is attention's over one call's patches (≥ every tiny width: 32, 64, 128);
    # chained through patch embed, 1 block (attention, MLP) and the merger: depth 4
    assert np.abs(split - once).max() <= fp32_atol(once, pixels.shape[0], depth=4)
    with pytest.raises(ValueError, match="patches but the grids cover"):
        graphs.vision(pixels[:-4], grids)


def test_batched_equals_one_by_one_joins_and_full_recompute(fp32, posts):
    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    single = [p.token_ids for p in predictor.predict(posts, batch_size=1, max_new_tokens=16)]
    batched = [p.token_ids for p in predictor.predict(posts, batch_size=len(posts), max_new_tokens=16)]
    requests = [predictor.request(p, max_new_tokens=16) for p in posts]
    full = [tuple(o.tokens) for o in predictor.generator(requests, max_new_tokens=16,
                                                         use_cache=False).run()]
    plain = [tuple(o.tokens) for o in predictor.generator(requests, max_new_tokens=16,
                                                          reuse_prefix=False).run()]
    gen: Generator = predictor.generator([], max_new_tokens=16)
    index, schedule = {}, {0: [0, 1], 1: [2, 3], 3: [4, 5]}     # posts joining before each step
    for step in range(40):
        for p in schedule.get(step, []):
            index[p] = gen.add([requests[p]])[0]
        gen.step()
    assert gen.done
    joined = [tuple(gen.outputs[index[p]].tokens) for p in range(len(posts))]
    assert single == batched == full == plain == joined
    assert len({len(t) for t in single}) > 1      # rows finished at different steps (eviction)


def test_predictor_and_cli_answer_with_and_without_an_image(fp32, posts, capsys):
    from mmkp_edge.cli.predict import main

    predictor = KeyphrasePredictor.from_bundle(fp32.bundle)
    image = next(p.image for p in posts if p.image)
    for pred in (predictor.predict_one("storm tonight", image, think="off", max_new_tokens=8),
                 predictor.predict_one("storm tonight", think="off", max_new_tokens=8)):
        assert pred.error is None and pred.text.startswith(prompt.ANSWER_OPEN)
    assert predictor.predict_one("x", image).timings["vision_s"] > 0
    for args in ([image, "storm tonight"], ["--no-image", "storm tonight"]):
        assert main(["--bundle", fp32.bundle, *args, "--json", "--think", "off",
                     "--max-new-tokens", "8"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["error"] is None and out["text"].startswith(prompt.ANSWER_OPEN)


def test_lora_trains_only_the_adapters_and_the_contract_rows(tiny, posts):
    from train.collate import train_batch
    from train.lora import apply_lora
    from train.student import load_student
    from train.tokens import trainable_token_ids

    student = load_student(tiny)
    before = {n: p.detach().clone() for n, p in student.model.named_parameters()}
    model = apply_lora(student.model, student.family, tokenizer=student.processor.tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)                   # never the vision tower
    batch = train_batch(student.processor, posts, [prompt.direct_target(["storm"])] * len(posts))
    assert "image_grid_thw" in batch and "mm_token_type_ids" in batch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = model.merge_and_unload()
    after = dict(merged.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(".visual." in n for n in before) and not any(".visual." in n for n in moved)
    rows = trainable_token_ids(student.processor.tokenizer, student.family.image_wrapper_tokens)
    embed = "model.language_model.embed_tokens.weight"
    changed_rows = (before[embed] != after[embed]).any(dim=1).nonzero().flatten().tolist()
    assert changed_rows and set(changed_rows) <= set(rows)               # only the contract's rows
    assert any("self_attn.q_proj" in n for n in moved)                   # LoRA merged into the LM


@pytest.mark.slow
def test_an_sft_stage_runs_on_qwen2_vl_and_exports(tiny, tmp_path):
    from stage_inputs import quick
    from train import config_loader
    from train.demo_data import make_demo_data
    from train.stages.config import StageConfig
    from train.stages.pipeline import default_recipe
    from train.stages.run import run_stage

    demo = make_demo_data(tmp_path / "demo", n_posts=30, seed=0, image_size=20)
    inputs = {"model": str(tiny), "train": str(demo.train), "test": str(demo.test),
              "root": str(tmp_path)}
    cfg = config_loader.load(StageConfig, default_recipe("sft"),
                             quick(inputs, name="qwen", **{"eval.max_new_tokens": "6"}), stage="sft")
    assert cfg.train.tuning == "lora"
    run = run_stage(cfg, log=None)
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "merged").is_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    report = export_bundle(ExportConfig(source=str(run), out=str(tmp_path / "bundle"),
                                        checks=ValidateConfig(new_tokens=8)))
    assert report.ok, json.dumps(report.validation)[:2000]
    assert Manifest.load(report.bundle).stage == "sft"


@pytest.mark.slow
def test_int8_bundle_quantizes_both_graphs_loads_and_predicts(tiny, posts, tmp_path):
    from students import train_briefly

    trained = train_briefly(tiny, tmp_path / "probe", tmp_path / "trained")
    report = export_bundle(ExportConfig(source=str(trained), out=str(tmp_path / "int8"),
                                        precision="int8",
                                        checks=ValidateConfig(agreement_posts=16, new_tokens=8)))
    assert report.ok, json.dumps(report.validation)[:2000]
    nodes = Manifest.load(report.bundle).quantization["matmulnbits_nodes"]
    assert nodes["vision_encoder"] > 0 and nodes["decoder_model_merged"] > 0
    preds = KeyphrasePredictor.from_bundle(report.bundle).predict(posts, think="off",
                                                                  max_new_tokens=8)
    assert all(p.error is None and p.text.startswith(prompt.ANSWER_OPEN) for p in preds)


@pytest.mark.slow
def test_dynamic_cot_chains_on_qwen2_vl_and_mmkp_bench_runs_its_bundle(tiny, tmp_path):
    """sft → dynamic_cot (the gate picks reasoning targets by the direct loss, as on Idefics3) →
    export → `mmkp-bench run` on the bundle, think=auto: every stage and the bench take Qwen2-VL."""
    import subprocess
    import sys

    from stage_inputs import quick
    from train import config_loader
    from train.demo_data import make_demo_data
    from train.stages.config import StageConfig
    from train.stages.pipeline import default_recipe
    from train.stages.run import run_stage

    demo = make_demo_data(tmp_path / "demo", n_posts=30, seed=0, image_size=20)
    rationales = tmp_path / "rationales.jsonl"
    with open(rationales, "w", encoding="utf-8") as fh:
        for post in read_jsonl(demo.train)[::2]:
            fh.write(json.dumps({"id": post.id, "kept": True,
                                 "rationale": f"The post is about {post.keyphrases[0]}."}) + "\n")
    inputs = {"model": str(tiny), "train": str(demo.train), "test": str(demo.test),
              "root": str(tmp_path)}

    def stage(name: str, **extra: str):
        cfg = config_loader.load(StageConfig, default_recipe(name),
                                 quick(inputs, name="qwen", **{"eval.max_new_tokens": "6", **extra}),
                                 stage=name)
        return run_stage(cfg, log=None)

    sft = stage("sft")
    dyn = stage("dynamic_cot", init_from=str(sft), rationales=str(rationales),
                **{"dynamic.quantile": "0.4", "train.steps": "5"})
    kept = {json.loads(line)["id"] for line in open(rationales)}
    records = [json.loads(line) for line in open(dyn / "train_log.jsonl")]
    chosen = []
    for r in records:
        assert r["reasoning"] == [loss > r["gamma"] and pid in kept
                                  for pid, loss in zip(r["ids"], r["direct_losses"])]
        chosen += r["reasoning"]
    assert any(chosen) and not all(chosen)
    report = export_bundle(ExportConfig(source=str(dyn), out=str(tmp_path / "bundle"),
                                        checks=ValidateConfig(new_tokens=8)))
    assert report.ok, json.dumps(report.validation)[:2000]
    proc = subprocess.run([sys.executable, "-m", "bench.cli", str(report.bundle), "--posts",
                           str(demo.test), "--posts-count", "4", "--batch-sizes", "1,2",
                           "--think", "auto", "--max-new-tokens", "6", "--repeats", "1",
                           "--threads", "1", "--bandwidth-mb", "16"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["measurements"]
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["tokens"] > 0 for r in rows)
