"""The one-command demo: synthetic posts → progressive training → int8 bundle → prediction.

`mmkp-train demo` (what `make demo` runs) shows the whole system working on a fresh machine with
no downloads and no GPU, on the real code paths: the demo generator writes posts and images, the
`demo` teacher (a stand-in for GPT-4o, writing rationales from the generator's ground truth) goes
through the real `cot-data` step and filter as part of the pipeline, the tiny random-init student
is trained by the real stages (zero_shot → sft → cot-data → cot → dynamic_cot), exported by the
real exporter to an int8 ONNX bundle, and served by the torch-free runtime.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mmkp_edge.errors import InputError
from mmkp_edge.posts import read_jsonl

from train import config_loader
from train.demo_data import make_demo_data
from train.tiny import TinyConfig, init_tiny


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"               # everything the demo writes goes under this folder
    n_posts: int = 3000                  # posts over train / valid / test
    seed: int = 0                        # data, weights and training order
    steps: int = 600                     # training steps per trained stage (sft, cot, dynamic_cot)
    batch_size: int = 8                  # training batch size
    tuning: str = "full"                 # full: every LM weight (a random-init tiny model learns
                                         # far faster than through LoRA adapters)
    lr: float = 1.0e-3                   # peak learning rate
    cpu_threads: int = 1                 # torch threads: 1 is fastest for a tiny model on 2 cores
    eval_posts: int = 300                # test posts each stage is scored on
    threads: int = 2                     # onnxruntime threads for the prediction step
    min_agreement: float = 0.95          # int8 export gate: probe posts with the fp32 keyphrases
    overwrite: bool = True               # replace an earlier demo under `out`
    stage_overrides: dict[str, Any] = field(default_factory=dict)   # extra pipeline `common` keys

    def validate(self) -> "DemoConfig":
        if self.n_posts < 60:
            raise InputError(f"n_posts must be >= 60, got {self.n_posts}")
        if self.tuning not in ("full", "lora"):
            raise InputError(f"tuning must be full or lora, got {self.tuning!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_posts < 1:
            raise InputError("steps, batch_size and eval_posts must be >= 1")
        return self


def _say(log: TextIO, text: str) -> None:
    print(f"demo: {text}", file=log, flush=True)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _pipeline_config(cfg: DemoConfig, out: Path, student: Path, data, rationales: Path):
    from train.stages.pipeline import PipelineConfig

    common = {
        "train": {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                  "tuning": cfg.tuning, "warmup_steps": 50, "seed": cfg.seed,
                  "cpu_threads": cfg.cpu_threads, "checkpoint_every": 0},
        "data": {"max_eval_posts": cfg.eval_posts},
    }
    return config_loader.build(PipelineConfig, {
        "name": "demo", "runs_dir": str(out / "runs"), "model": str(student),
        "rationales": str(rationales),
        "cot_data": {"teacher": "demo", "model": "demo-ground-truth"},
        "data": {"train": str(data.train), "valid": str(data.valid), "test": str(data.test)},
        "common": config_loader.merge(common, cfg.stage_overrides),
    })


def run_demo(cfg: DemoConfig, log: TextIO = sys.stderr) -> dict:
    """Run every step; returns the summary (stage metrics, bundle size, predictions, timings)."""
    # imported here so that `mmkp-train --help` does not load torch, onnx and the exporter
    from export.exporter import ExportConfig, export_bundle
    from export.validate import ValidateConfig
    from mmkp_edge.predictor import KeyphrasePredictor
    from mmkp_edge.query import Query
    from train.cot.records import latest_records
    from train.stages.pipeline import run_pipeline

    cfg.validate()
    out = Path(cfg.out)
    times: dict[str, float] = {}
    start = time.perf_counter()

    _say(log, f"1/5 synthetic posts ({cfg.n_posts}) → {out / 'data'}")
    t = time.perf_counter()
    data = make_demo_data(out / "data", n_posts=cfg.n_posts, seed=cfg.seed)
    times["data_s"] = time.perf_counter() - t

    _say(log, f"2/5 tiny random-weight student → {out / 'student'}")
    t = time.perf_counter()
    student = init_tiny(out / "student", TinyConfig(seed=cfg.seed))
    times["student_s"] = time.perf_counter() - t

    _say(log, "3/5 progressive training: zero_shot → sft → cot-data (the demo teacher, a "
              "stand-in for a real teacher such as GPT-4o) → cot → dynamic_cot")
    t = time.perf_counter()
    rationales = out / "rationales.jsonl"
    if rationales.exists() and cfg.overwrite:
        rationales.unlink()
    pipeline = _pipeline_config(cfg, out, student, data, rationales)
    results = run_pipeline(pipeline, overwrite=cfg.overwrite, log=log)
    times["training_s"] = time.perf_counter() - t
    records = latest_records(rationales).values()
    kept = sum(bool(r.get("kept")) for r in records)
    cot = {"processed": len(records), "kept": kept, "rejected": len(records) - kept,
           "kept_rate": kept / max(len(records), 1)}

    _say(log, "4/5 mmkp-export --int8 (fp32 graphs, then weight-only int8, each validated)")
    t = time.perf_counter()
    bundle = out / "bundle-int8"
    run_dir = Path(pipeline.runs_dir) / "dynamic_cot" / pipeline.name
    report = export_bundle(ExportConfig(source=str(run_dir), out=str(bundle), precision="int8",
                                        overwrite=cfg.overwrite,
                                        checks=ValidateConfig(min_agreement=cfg.min_agreement,
                                                              probe_file=str(data.test))))
    if not report.ok:
        raise InputError(f"export failed validation: {json.dumps(report.validation)}")
    times["export_s"] = time.perf_counter() - t

    _say(log, "5/5 mmkp-predict on two demo test images (think=auto)")
    t = time.perf_counter()
    test_posts = [p for p in read_jsonl(data.test) if p.image][:2]
    predictor = KeyphrasePredictor.from_bundle(bundle, threads=cfg.threads)
    predictions = predictor.predict([Query(text=p.text, image=p.image, id=p.id) for p in test_posts],
                                    think="auto")
    times["predict_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start

    return {
        "stages": results,
        "cot_data": cot,
        "bundle": {"path": str(bundle), "bytes": _bytes(bundle), "validation": report.validation},
        "predictions": [{"id": p.id, "text": p.text, "gold": list(p.keyphrases),
                         "predicted": pr.keyphrases, "thought": pr.thought,
                         "rationale": pr.rationale, "error": pr.error,
                         "latency_ms": 1000 * sum(v for k, v in pr.timings.items() if k.endswith("_s"))}
                        for p, pr in zip(test_posts, predictions)],
        "times": times,
    }
