"""The progressive pipeline on the tiny student: four chained run dirs with one metrics schema, and
bad inputs rejected with one line before any model loads."""

import json
from pathlib import Path

import pytest
import yaml

from stage_inputs import make_inputs, quick
from train.cli import main
from train.families.idefics3 import Idefics3Family


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return make_inputs(tmp_path_factory.mktemp("stages"))


def _sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def _keys(obj, prefix=""):
    """Every dotted key path of a nested dict."""
    if not isinstance(obj, dict):
        return {prefix.rstrip(".")}
    return {k for key, value in obj.items() for k in _keys(value, f"{prefix}{key}.")}


@pytest.fixture(scope="module")
def pipeline_runs(inputs):
    args = ["pipeline", *_sets(quick(inputs, "common.", rationales=inputs["rationales"],
                                     name="chain"))]
    assert main(args) == 0
    runs = Path(inputs["root"]) / "runs"
    return {s: runs / s / "chain" for s in ("zero_shot", "sft", "cot", "dynamic_cot")}


def test_pipeline_writes_four_comparable_run_dirs(pipeline_runs, inputs):
    metrics = {s: json.loads((p / "metrics.json").read_text()) for s, p in pipeline_runs.items()}
    schemas = {s: _keys(m) for s, m in metrics.items()}
    assert len({frozenset(k) for k in schemas.values()}) == 1, schemas
    assert {"scores.all.f1@1", "scores.present.f1@3", "scores.absent.f1@3", "scores.seen.f1@3",
            "scores.unseen.f1@3", "think_rate", "tokens_per_post", "n_posts", "train.steps",
            "train.final_loss", "train.tokens_per_s", "train.wall_s",
            "train.cot_fraction"} <= schemas["sft"]
    n_test = sum(1 for _ in open(inputs["test"]))
    for stage, path in pipeline_runs.items():
        preds = [json.loads(line) for line in open(path / "predictions.jsonl")]
        assert len(preds) == n_test == metrics[stage]["n_posts"]
        assert set(preds[0]) == {"id", "text", "keyphrases", "thought", "n_tokens", "finish"}
        config = yaml.safe_load((path / "config.yaml").read_text())
        assert config["stage"] == stage and config["run"]["versions"]["torch"]
    assert [metrics[s]["think"] for s in metrics] == ["off", "off", "on", "auto"]
    assert metrics["zero_shot"]["train"]["steps"] is None
    assert all(metrics[s]["train"]["steps"] == 3 for s in ("sft", "cot", "dynamic_cot"))
    assert metrics["cot"]["think_rate"] == 1.0 and metrics["sft"]["think_rate"] == 0.0
    n_train = sum(1 for _ in open(inputs["train"]))
    assert metrics["cot"]["train"]["with_rationale"] == (n_train + 1) // 2
    assert metrics["cot"]["train"]["cot_fraction"] > 0
    assert metrics["sft"]["train"]["cot_fraction"] == 0


def test_pipeline_chains_merged_checkpoints_without_pickle(pipeline_runs):
    runs = pipeline_runs
    assert yaml.safe_load((runs["sft"] / "config.yaml").read_text())["init_from"] == str(runs["zero_shot"])
    for stage in ("cot", "dynamic_cot"):
        config = yaml.safe_load((runs[stage] / "config.yaml").read_text())
        assert config["init_from"] == str(runs["sft"])
        assert config["run"]["source"] == str((runs["sft"] / "merged").resolve())
    for stage in ("sft", "cot", "dynamic_cot"):
        assert (runs[stage] / "merged" / "model.safetensors").is_file()
        assert (runs[stage] / "adapter" / "adapter_config.json").is_file()
        files = [p for p in runs[stage].rglob("*") if p.is_file()]
        assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
        assert {p.suffix for p in (runs[stage] / "checkpoints").rglob("*.*")} == {".safetensors",
                                                                                 ".json"}


def test_pipeline_resume_skips_finished_stages(pipeline_runs, inputs, capsys):
    before = (pipeline_runs["cot"] / "metrics.json").read_text()
    args = ["pipeline", "--resume", *_sets(quick(inputs, "common.", rationales=inputs["rationales"],
                                                 name="chain"))]
    assert main(args) == 0
    assert "finished earlier, skipped" in capsys.readouterr().err
    assert (pipeline_runs["cot"] / "metrics.json").read_text() == before


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error")
    monkeypatch.setattr(Idefics3Family, "load_model", refuse)


def _one_line_error(capsys, exc_info, needle):
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err, err


def test_unknown_recipe_key_is_one_line(inputs, tmp_path, capsys, no_model_loads):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("stage: sft\ntrain:\n  stepz: 3\n")
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--recipe", str(recipe), *_sets(quick(inputs))])
    _one_line_error(capsys, exc, "unknown config key 'train.stepz'")


def test_missing_rationale_file_is_one_line(inputs, tmp_path, capsys, no_model_loads):
    with pytest.raises(SystemExit) as exc:
        main(["cot", *_sets(quick(inputs, rationales=str(tmp_path / "nope.jsonl")))])
    _one_line_error(capsys, exc, "rationale file not found")
    with pytest.raises(SystemExit) as exc:      # the pipeline checks cot before zero_shot runs
        main(["pipeline", *_sets(quick(inputs, "common.", rationales=str(tmp_path / "nope.jsonl"),
                                       name="bad"))])
    _one_line_error(capsys, exc, "rationale file not found")
    assert not (Path(inputs["root"]) / "runs" / "zero_shot" / "bad").exists()


def test_init_from_a_run_of_the_wrong_stage_is_one_line(inputs, tmp_path, capsys, no_model_loads):
    fake = tmp_path / "runs" / "cot" / "x"
    fake.mkdir(parents=True)
    (fake / "config.yaml").write_text("stage: cot\nmodel: whatever\n")
    with pytest.raises(SystemExit) as exc:
        main(["sft", *_sets(quick(inputs, init_from=str(fake)))])
    _one_line_error(capsys, exc, "a cot run; sft starts from zero_shot")
    with pytest.raises(SystemExit) as exc:
        main(["cot", *_sets(quick(inputs, init_from=str(tmp_path / "missing")))])
    _one_line_error(capsys, exc, "not a run dir")


def _with_bad_images(source: str, out: Path) -> tuple[Path, int]:
    """A copy of a posts file whose first post's image is missing and second's undecodable."""
    posts = [json.loads(line) for line in open(source)]
    for p in posts:                                   # the copy lives elsewhere: absolute paths
        p["image"] = p["image"] and str(Path(source).parent / p["image"])
    (out.parent / "broken.png").write_bytes(b"not a png")
    posts[0]["image"] = str(out.parent / "gone.png")
    posts[1]["image"] = str(out.parent / "broken.png")
    out.write_text("".join(json.dumps(p) + "\n" for p in posts))
    return out, len(posts)


def test_missing_and_undecodable_images_are_text_only_and_counted(inputs, tmp_path, capsys):
    """Training and evaluation default to bad_image=text-only (CMKP ships without its images): the
    stage runs, and metrics.json and stderr say how many posts lost their image."""
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    train, _ = _with_bad_images(inputs["train"], tmp_path / "train" / "train.jsonl")
    test, n_test = _with_bad_images(inputs["test"], tmp_path / "test" / "test.jsonl")
    sets = quick(inputs, **{"data.train": str(train), "data.test": str(test), "name": "img",
                            "train.steps": "10"})
    assert main(["sft", *_sets(sets)]) == 0
    out, err = capsys.readouterr()
    assert "2 posts name an image file that does not exist" in err
    assert "used text-only: 1 training, 1 eval" in err
    metrics = json.loads((Path(out.splitlines()[0]) / "metrics.json").read_text())
    assert metrics["images"] == {"missing": 2, "unusable_eval": 1, "unusable_train": 1}
    assert metrics["n_posts"] == n_test


@pytest.mark.parametrize("which", ["missing", "undecodable"])
def test_bad_image_error_refuses_the_data_before_any_model_loads(inputs, tmp_path, capsys,
                                                                 no_model_loads, which):
    test, _ = _with_bad_images(inputs["test"], tmp_path / "test.jsonl")
    lines = open(test).read().splitlines(keepends=True)        # [missing, undecodable, good…]
    test.write_text("".join([lines[0] if which == "missing" else lines[1], *lines[2:]]))
    with pytest.raises(SystemExit) as exc:
        main(["zero-shot", *_sets(quick(inputs, **{"data.test": str(test), "name": "strict",
                                                   "data.bad_image": "error"}))])
    needle = "image not found" if which == "missing" else "unreadable image"
    _one_line_error(capsys, exc, needle)
    with pytest.raises(SystemExit) as exc:
        main(["zero-shot", *_sets(quick(inputs, **{"data.bad_image": "sometimes"}))])
    _one_line_error(capsys, exc, "data.bad_image must be one of error, text-only")


def test_pipeline_refuses_to_clobber_earlier_runs(pipeline_runs, inputs, capsys, no_model_loads):
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", *_sets(quick(inputs, "common.", rationales=inputs["rationales"],
                                       name="chain"))])
    _one_line_error(capsys, exc, "already exists; use --resume")


def test_pipeline_runs_the_teacher_step_before_the_first_stage_that_needs_rationales(tmp_path):
    """`cot_data` in the pipeline recipe writes `rationales` (here with the demo teacher) between
    sft and cot, so a recipe alone goes from posts to Dynamic CoT."""
    from train import config_loader
    from train.demo_data import make_demo_data
    from train.stages.pipeline import PipelineConfig, run_pipeline
    from train.tiny import init_tiny

    data = make_demo_data(tmp_path / "demo", n_posts=60, seed=2, image_size=32)
    student = init_tiny(tmp_path / "student")
    rationales = tmp_path / "rationales.jsonl"
    cfg = config_loader.build(PipelineConfig, {
        "name": "t", "runs_dir": str(tmp_path / "runs"), "model": str(student),
        "rationales": str(rationales), "stages": ["sft", "cot"],
        "cot_data": {"teacher": "demo", "model": "demo-ground-truth"},
        "data": {"train": str(data.train), "test": str(data.test), "max_eval_posts": 4},
        "common": {"train": {"steps": 2, "batch_size": 4, "cpu_threads": 1,
                             "checkpoint_every": 0}, "eval": {"max_new_tokens": 8}},
    })
    assert not rationales.exists()
    results = run_pipeline(cfg, log=None)
    assert [r["stage"] for r in results] == ["sft", "cot"]
    assert rationales.is_file() and results[1]["train"]["with_rationale"] > 0
