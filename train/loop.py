"""The one training loop every training stage shares (sft, cot, dynamic_cot differ only in targets).

Stages hand the loop a `TargetPlan`: given a micro-batch of posts (and the model, for Dynamic CoT's
scoring pass) it returns each post's target string and whether it is a reasoning target. The loop
owns everything else: AdamW on the trainable parameters, warmup + cosine/linear decay, gradient
accumulation, bf16 autocast (train.precision, see train.precision), gradient clipping, a per-step JSONL log and a
stderr progress line, and checkpoints that resume exactly.

Exact resume rests on one rule: *everything a step does is a function of the step number and the
saved state*. The data order is a seeded permutation per epoch, so step s reads samples
[s·B·A, (s+1)·B·A) of the endless permuted stream; the learning rate is `lr_at(s)`; dropout draws
from the torch RNG whose state is checkpointed; the plan's state (the gate's loss window) is too.

Multi-GPU is the same command under a launcher, no code or recipe change (`train.distributed`):

    torchrun --nproc_per_node 4 -m train.cli sft --set train.batch_size=32 …
    accelerate launch --multi_gpu --num_processes 4 -m train.cli pipeline …   # the same DDP

`train.batch_size` is the *global* micro-batch: each of the N ranks trains a contiguous 1/N slice
of it on cuda:LOCAL_RANK (it must be a multiple of N), gradients are averaged by DDP, and the loss
is normalised by the global token count, so N processes log the same losses, gate the same samples
and reach the same weights as one process with the same config (up to float summation order; with
LoRA dropout > 0 each rank draws its own dropout masks). Only rank 0 writes files. Resume needs the
run dir on a file system every rank sees; nothing else in a checkpoint depends on N, so it may even
resume under another N (each rank's dropout RNG is checkpointed too, exact for the same N).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import numpy as np
import torch

from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post

from .precision import autocast, autocast_dtype
from .collate import IGNORE, train_batch
from .distributed import World, current
from .resume import checkpoints, load_checkpoint, rng_tensors, save_checkpoint
from .student import ImageStats


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 0                 # optimizer steps; 0 → derived from `epochs`
    epochs: float = 1.0            # passes over the training posts when steps = 0
    batch_size: int = 8            # posts per micro-batch
    grad_accum: int = 1            # micro-batches per optimizer step
    lr: float = 2e-4               # peak learning rate
    schedule: Literal["cosine", "linear", "constant"] = "cosine"   # decay after warmup
    warmup_steps: int = 10         # linear warmup from 0 to `lr`
    min_lr_ratio: float = 0.1      # decay ends at lr × this
    weight_decay: float = 0.0      # AdamW decoupled weight decay
    max_grad_norm: float = 1.0     # clip the global grad norm (0 = off)
    seed: int = 0                  # LoRA init, dropout and data order
    tuning: Literal["lora", "full"] = "lora"   # adapters only, or every language-model weight
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU;
                                   # bf16: autocast on CUDA or a bf16 CPU (train.precision)
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    cpu_threads: int = 0           # torch CPU threads for training and eval (0 = torch's default;
                                   # 1 is far faster for tiny models on a busy machine)
    gradient_checkpointing: bool = False   # recompute activations (less memory, slower)
    checkpoint_every: int = 200    # save a resumable checkpoint every N steps (0 = only the last)
    keep_checkpoints: int = 2      # how many checkpoints to keep
    log_every: int = 10            # progress line every N steps (the JSONL log has every step)

    def validate(self) -> "LoopConfig":
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0):
            raise InputError("train.steps must be >= 0, and train.epochs > 0 when steps is 0")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise InputError("train.batch_size and train.grad_accum must be >= 1")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError("train.lr must be > 0 and train.min_lr_ratio in [0, 1]")
        if self.cpu_threads < 0:
            raise InputError("train.cpu_threads must be >= 0")
        if min(self.warmup_steps, self.checkpoint_every, self.keep_checkpoints) < 0 \
                or self.log_every < 1 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise InputError("train: warmup_steps, checkpoint_every, keep_checkpoints, weight_decay "
                             "and max_grad_norm must be >= 0, log_every >= 1")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise InputError(f"train.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        return self

    def total_steps(self, n_posts: int) -> int:
        if self.steps:
            return self.steps
        per_step = self.batch_size * self.grad_accum
        return max(1, math.ceil(self.epochs * n_posts / per_step))


def lr_at(step: int, cfg: LoopConfig, total: int) -> float:
    """Learning rate of optimizer step `step` (1-based): warmup, then the chosen decay."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def sample_indices(start: int, count: int, n: int, seed: int) -> list[int]:
    """Indices `start … start+count-1` of the endless stream of per-epoch seeded permutations."""
    out, cache = [], {}
    for k in range(start, start + count):
        epoch = k // n
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(cache[epoch][k % n]))
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"train.device={name} but CUDA is not available")
    return torch.device(name)


# ---------------------------------------------------------------- what stages provide

@dataclass(frozen=True)
class Targets:
    texts: list[str]                          # one full target string per post
    reasoning: list[bool]                     # True where the target is a reasoning target
    gamma: float | None = None                # Dynamic CoT: the threshold used for this batch
    direct_losses: list[float] | None = None  # Dynamic CoT: the gate's per-sample scores


class TargetPlan(Protocol):
    """How a stage picks each post's target. `prepare` runs once before step 1 of a fresh run."""

    def prepare(self, model, processor, posts: Sequence[Post]) -> None: ...
    def targets(self, model, processor, posts: Sequence[Post]) -> Targets: ...
    def state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


@dataclass
class TrainSummary:
    steps: int = 0                      # optimizer steps taken in total (incl. before a resume)
    final_loss: float | None = None     # mean loss of the last `log_every` steps
    tokens_per_s: float | None = None   # input tokens (prompt + target) per second, all ranks
    wall_s: float = 0.0                 # training time, summed over resumed segments
    cot_fraction: float | None = None   # share of trained samples that had a reasoning target
    resumed_from: int | None = None     # step of the checkpoint this process started from
    recent: list[float] = field(default_factory=list)   # last losses (for final_loss)


# ---------------------------------------------------------------- the loop

def _batch_nll(model, batch: dict[str, torch.Tensor], device_type: str, amp) -> torch.Tensor:
    """Summed NLL of the batch's supervised tokens (the caller divides by the global count)."""
    labels = batch.pop("labels")
    with autocast(device_type, amp):
        logits = model(**batch).logits                                      # (B, T, V)
    logits, labels = logits[:, :-1].float(), labels[:, 1:]                  # (B, T-1, V), (B, T-1)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                             reduction="sum")


class Progress:
    """One stderr line every `every` steps: step, loss, lr, CoT fraction, γ, speed, ETA."""

    def __init__(self, label: str, total: int, every: int, stream: TextIO | None) -> None:
        self.label, self.total, self.every, self.stream = label, total, every, stream

    def update(self, rec: dict, eta_s: float) -> None:
        step = rec["step"]
        if self.stream is None or (step % self.every and step not in (1, self.total)):
            return
        cot = "" if rec["cot_fraction"] is None else f"  cot {rec['cot_fraction']:.2f}"
        gamma = "" if rec["gamma"] is None else f"  γ {rec['gamma']:.3f}"
        print(f"{self.label} step {step}/{self.total}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}"
              f"{cot}{gamma}  {rec['tokens_per_s']:.0f} tok/s  eta {eta_s / 60:.1f} min",
              file=self.stream, flush=True)


def train(model, processor, posts: Sequence[Post], plan: TargetPlan, cfg: LoopConfig,
          run_dir: str | Path, *, resume: bool = False, label: str = "train",
          log: TextIO | None = sys.stderr, stats: ImageStats | None = None,
          on_step: Callable[[dict], Any] | None = None, world: World | None = None,
          max_prompt_tokens: int | None = None) -> TrainSummary:
    """Train `model` in place for `cfg.total_steps(len(posts))` optimizer steps.

    Writes `run_dir/train_log.jsonl` (one record per step) and `run_dir/checkpoints/`. With
    `resume`, continues from the newest checkpoint (fresh start when there is none). `on_step` is
    called with each step's record after its checkpoint (if any) is written.

    A step record: step, lr, loss (mean of the micro-batch token-mean losses), grad_norm, and per
    trained sample (micro-batches concatenated) ids, reasoning (the target kind), target_tokens
    (supervised tokens actually trained), direct_losses (the gate's scores, or None); cot_fraction;
    gamma (the last micro-batch's γ) and gammas (one per micro-batch); input_tokens,
    supervised_tokens, tokens_per_s, time_s.

    `max_prompt_tokens` cuts long posts to fit (train.collate.encode_post; the stage passes
    `train.student.prompt_budget(model, eval.max_new_tokens)`).

    Under a launcher (`world`, default: the running `train.distributed` session) every rank calls
    this with the same arguments; records are global and identical on every rank, and only rank 0
    writes the log and checkpoints.
    """
    cfg.validate()
    world = world or current()
    world.check_batch(cfg.batch_size)
    run_dir = Path(run_dir)
    ckpt_dir, log_path = run_dir / "checkpoints", run_dir / "train_log.jsonl"
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg.precision, device.type)                  # None = fp32
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(posts))
    per_step = cfg.batch_size * cfg.grad_accum
    summary = TrainSummary()
    start, cot_counts = 0, [0, 0]
    found = checkpoints(ckpt_dir) if resume else []
    if found:
        resumed = load_checkpoint(found[-1], model, optimizer, rng_prefix=world.rng_prefix)
        start, summary.resumed_from = resumed.step, resumed.step
        plan.load_state(resumed.extra["plan"])
        cot_counts = resumed.extra["cot_counts"]
        summary.wall_s = resumed.extra["wall_s"]
        summary.recent = resumed.extra["recent"]
        if world.is_main:
            _truncate_log(log_path, start)
    else:
        torch.manual_seed(cfg.seed + world.rank)          # rank 0 = the one-process stream
        if world.is_main:
            log_path.unlink(missing_ok=True)
        plan.prepare(model, processor, posts)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    progress = Progress(label, total, cfg.log_every, log if world.is_main else None)
    model.train()
    ddp = world.wrap(model, find_unused=cfg.tuning == "full")
    ddp.train()
    t0, tokens_seen = time.perf_counter(), 0
    with (open(log_path, "a", encoding="utf-8") if world.is_main else _Discard()) as log_file:
        for step in range(start + 1, total + 1):
            t_step = time.perf_counter()
            lr = lr_at(step, cfg, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            first = (step - 1) * per_step
            rec: dict[str, Any] = {"step": step, "lr": lr, "ids": [], "reasoning": [],
                                   "target_tokens": [], "direct_losses": [], "gamma": None,
                                   "gammas": []}
            losses, n_tokens, n_input = [], 0, 0
            for micro in range(cfg.grad_accum):
                idx = sample_indices(first + micro * cfg.batch_size, cfg.batch_size, len(posts),
                                     cfg.seed)
                chunk = [posts[i] for i in idx]
                chosen = plan.targets(model, processor, chunk)     # global: same on every rank
                batch = train_batch(processor, world.shard(chunk), world.shard(chosen.texts), stats,
                                    max_prompt_tokens)
                rec["ids"] += [p.id for p in chunk]
                rec["reasoning"] += chosen.reasoning
                per_post = (batch["labels"] != IGNORE).sum(dim=1).tolist()
                rec["target_tokens"] += world.gather(per_post)
                rec["direct_losses"] += chosen.direct_losses or []
                rec["gammas"].append(chosen.gamma)           # one γ per micro-batch
                rec["gamma"] = chosen.gamma if chosen.gamma is not None else rec["gamma"]
                counts = world.sum(torch.tensor([int(batch["attention_mask"].sum()),
                                                 int((batch["labels"][:, 1:] != IGNORE).sum())]))
                n_input += int(counts[0])
                n = int(counts[1])                           # supervised tokens, all ranks
                batch = {k: v.to(device) for k, v in batch.items()}
                with world.no_sync(ddp, sync=micro == cfg.grad_accum - 1):
                    nll = _batch_nll(ddp, batch, device.type, amp)
                    # DDP averages gradients over ranks: × size makes it the global token mean
                    (nll * (world.size / max(n, 1) / cfg.grad_accum)).backward()
                losses.append(float(world.sum(nll.detach())) / max(n, 1))
                n_tokens += n
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.perf_counter() - t_step
            summary.wall_s += elapsed
            tokens_seen += n_input
            cot_counts[0] += sum(rec["reasoning"])
            cot_counts[1] += len(rec["reasoning"])
            rec.update(loss=sum(losses) / len(losses), grad_norm=float(norm),
                       cot_fraction=sum(rec["reasoning"]) / len(rec["reasoning"]),
                       input_tokens=n_input, supervised_tokens=n_tokens,
                       tokens_per_s=n_input / max(elapsed, 1e-9), time_s=elapsed)
            if not rec["direct_losses"]:
                rec["direct_losses"] = None
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            summary.recent = (summary.recent + [rec["loss"]])[-cfg.log_every:]
            summary.steps = step
            if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                rng = world.rng_states(rng_tensors())         # collective: every rank's RNG
                if world.is_main:
                    save_checkpoint(ckpt_dir, step, model, optimizer, keep=cfg.keep_checkpoints,
                                    rng=rng, extra={
                                        "plan": plan.state(), "cot_counts": cot_counts,
                                        "wall_s": summary.wall_s, "recent": summary.recent})
            done = time.perf_counter() - t0
            progress.update(rec, done / (step - start) * (total - step))
            if on_step is not None:
                on_step(rec)
    if cfg.gradient_checkpointing:
        _checkpointing(model, False)
    model.eval()
    summary.steps = max(summary.steps, start)
    summary.final_loss = sum(summary.recent) / len(summary.recent) if summary.recent else None
    run_time = time.perf_counter() - t0
    summary.tokens_per_s = tokens_seen / run_time if tokens_seen else None
    summary.cot_fraction = cot_counts[0] / cot_counts[1] if cot_counts[1] else None
    return summary


class _Discard:
    """The log file of ranks other than 0: writes go nowhere."""

    def __enter__(self) -> "_Discard":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on the transformers model, by its 5.x name when known."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not on:
        getattr(base, "activation_checkpointing_disable", base.gradient_checkpointing_disable)()
    elif hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable({"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past `step` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
