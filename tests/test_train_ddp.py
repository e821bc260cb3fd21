"""Multi-process data parallel (gloo, CPU): `torchrun --nproc_per_node 2 -m train.cli pipeline …`
trains exactly what one process trains with the same config — same data order, losses, Dynamic-CoT
gate decisions and final weights — and only rank 0 writes the run dirs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmkp_edge.errors import InputError
from stage_inputs import Interrupt, make_inputs, quick, stop_after
from train import config_loader
from train.cli import main
from train.distributed import World
from train.stages.config import StageConfig
from train.stages.pipeline import default_recipe
from train.stages.run import run_stage

from tolerance import student_atol

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sft", "dynamic_cot")


def _atol(inputs, values) -> float:
    """Two processes run the same math on half-batches (other padded widths, so other kernel
    blocking) and all-reduce the gradients in another order: rounding differences in the forward,
    bounded like any two evaluations of the student (tests/tolerance.py: widest reduction × depth ×
    2^-23 × |value|, ≈ 6e-4 for a loss ~7; measured ≤ 7.5e-7). A real divergence — another data
    order, a missing all-reduce — moves the step-2 loss by ~1e-2."""
    from transformers import AutoConfig
    return student_atol(values, AutoConfig.from_pretrained(inputs["model"]))


def _sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def _torchrun(args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "train.cli", *args]


def _args(inputs, runs_dir):
    extra = {"rationales": inputs["rationales"], "name": "ddp", "runs_dir": str(runs_dir),
             "stages": "[sft,dynamic_cot]", "common.train.grad_accum": "2",
             "common.lora.dropout": "0", "common.dynamic.quantile": "0.5",
             "common.dynamic.window": "8", "common.train.checkpoint_every": "2",
             "common.eval.max_new_tokens": "2", "common.data.max_eval_posts": "2"}
    return ["pipeline", *_sets(quick(inputs, "common.", **extra))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same pipeline (sft → dynamic_cot, global micro-batch 4, grad_accum 2) in one process and
    in two gloo processes under torchrun, started side by side."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ddp")
    inputs = make_inputs(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    ddp = subprocess.Popen(_torchrun(_args(inputs, root / "ddp")), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert main(_args(inputs, root / "single")) == 0
        out, err = ddp.communicate(timeout=300)
    finally:
        ddp.kill()
    assert ddp.returncode == 0, err[-3000:]
    return {"single": root / "single", "ddp": root / "ddp", "stdout": out, "stderr": err,
            "inputs": inputs, "root": root, "env": env}


def _log(run):
    return [json.loads(line) for line in open(run / "train_log.jsonl")]


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_train_exactly_what_one_process_trains(runs, stage):
    one, two = _log(runs["single"] / stage / "ddp"), _log(runs["ddp"] / stage / "ddp")
    assert [r["step"] for r in two] == [1, 2, 3]                   # rank 1 appended nothing
    for a, b in zip(one, two):
        assert a["ids"] == b["ids"] and len(a["ids"]) == 8         # global batch, same order
        assert a["reasoning"] == b["reasoning"]                    # the gate decided the same
        assert a["target_tokens"] == b["target_tokens"]
        assert a["supervised_tokens"] == b["supervised_tokens"]
        assert a["input_tokens"] == b["input_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=0, abs=_atol(runs["inputs"], a["loss"]))
        if stage == "dynamic_cot":
            atol = _atol(runs["inputs"], a["direct_losses"])
            assert b["direct_losses"] == pytest.approx(a["direct_losses"], rel=0, abs=atol)
            assert b["gammas"] == pytest.approx(a["gammas"], rel=0, abs=atol)   # quantiles of them
    if stage == "dynamic_cot":
        decisions = [x for r in one for x in r["reasoning"]]
        assert any(decisions) and not all(decisions)               # the gate really gated
    wa = load_file(str(runs["single"] / stage / "ddp" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(runs["ddp"] / stage / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        # Adam's update is lr·m/√v: on an element whose gradient is ~0, a float-summation-order
        # difference can move it by up to lr (1e-2 here). Nearly every element agrees to 1e-5.
        diff = (wb[key].float() - wa[key].float()).abs()
        assert float(diff.max()) <= 2e-2, key
        assert int((diff > 1e-5).sum()) <= max(1, diff.numel() // 1000), (key, float(diff.max()))
    moved = load_file(str(runs["ddp"] / "sft" / "ddp" / "checkpoints" / "step-0000003"
                          / "trainable.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in moved.items() if "lora_B" in k)   # it trained


def test_only_rank_zero_writes(runs):
    for stage in STAGES:
        files = {str(p.relative_to(runs[kind] / stage / "ddp")) for kind in ("single", "ddp")
                 for p in (runs[kind] / stage / "ddp").rglob("*") if p.is_file()}
        single = {str(p.relative_to(runs["single"] / stage / "ddp"))
                  for p in (runs["single"] / stage / "ddp").rglob("*") if p.is_file()}
        assert files == single                                     # same files, nothing extra
        preds = (runs["ddp"] / stage / "ddp" / "predictions.jsonl").read_text().splitlines()
        assert len(preds) == 2                                     # one evaluation, not two
    assert runs["stdout"].count('"pipeline": "ddp"') == 1          # one result line
    rng = load_file(str(runs["ddp"] / "sft" / "ddp" / "checkpoints" / "step-0000003"
                        / "optimizer.safetensors"))
    assert {"rng.cpu", "rank0.rng.cpu", "rank1.rng.cpu"} <= set(rng)   # each rank's dropout RNG




def test_a_run_interrupted_in_one_process_resumes_under_two(runs):
    """Weights, optimizer, data order and gate state do not depend on the number of processes, so a
    checkpoint resumes under any N (here 1 → 2) and continues with the uninterrupted losses."""
    sets = quick(runs["inputs"], name="resumed", runs_dir=str(runs["root"] / "resume"),
                 **{"train.grad_accum": "2", "lora.dropout": "0", "train.checkpoint_every": "2",
                    "eval.max_new_tokens": "2", "data.max_eval_posts": "2"})
    config = config_loader.load(StageConfig, default_recipe("sft"), sets, stage="sft")
    with pytest.raises(Interrupt):
        run_stage(config, log=None, on_step=stop_after(2))       # dies after checkpoint 2
    done = subprocess.run(_torchrun(["sft", "--resume", *_sets(sets)]), cwd=REPO, env=runs["env"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs["root"] / "resume" / "sft" / "resumed"
    resumed, straight = _log(run), _log(runs["single"] / "sft" / "ddp")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["ids"] for r in resumed] == [r["ids"] for r in straight]
    losses = [r["loss"] for r in straight]
    assert [r["loss"] for r in resumed] == pytest.approx(losses, rel=0,
                                                         abs=_atol(runs["inputs"], losses))
    assert json.loads((run / "metrics.json").read_text())["train"]["resumed_from"] == 2


def test_shards_partition_the_global_batch_in_order():
    items = list(range(11))
    for size in (1, 2, 3, 4):
        parts = [World(rank, size, rank).shard(items) for rank in range(size)]
        assert [x for part in parts for x in part] == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert World().gather([1, 2]) == [1, 2] and not World().parallel


def test_the_global_batch_must_split_evenly():
    World(1, 2, 1).check_batch(4)
    with pytest.raises(InputError, match="multiple of the 2 processes"):
        World(1, 2, 1).check_batch(3)
