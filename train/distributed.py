"""Multi-process data parallel (DDP) for the shared loop, switched on by the launcher's environment.

`torchrun --nproc_per_node N -m train.cli sft …` and `accelerate launch -m train.cli sft …` start N
copies of the same command with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT set; `World`
reads them, so the code and the recipe stay the same for 1 or N processes. Without those variables
(or with WORLD_SIZE=1) every helper here is the identity and nothing is initialised.

The one invariant: N processes train exactly what one process would. `train.batch_size` stays the
*global* micro-batch; each rank takes a contiguous slice of it (`shard`), the loss of each slice is
normalised by the global supervised-token count, so DDP's gradient average equals the one-process
gradient, and everything a record or the Dynamic-CoT gate sees (ids, losses, token counts, the
gate's scores) is gathered back into the global batch in the one-process order. Only rank 0
writes (run dir, log, checkpoints, adapter/merge, evaluation); the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from mmkp_edge.errors import InputError

T = TypeVar("T")
# rank 0 evaluates / merges while the others wait at a barrier: allow for a long evaluation
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    rank: int = 0            # this process, 0 … size-1 (RANK)
    size: int = 1            # processes in the job (WORLD_SIZE)
    local_rank: int = 0      # this process on its node: picks cuda:LOCAL_RANK (LOCAL_RANK)

    @classmethod
    def from_env(cls) -> "World":
        """The launcher's view (torchrun, accelerate launch); one process when none is set."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise InputError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None
        if size < 1 or not 0 <= rank < size:
            raise InputError(f"bad launcher environment: RANK={rank} WORLD_SIZE={size}")
        return cls(rank, size, local)

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ lifecycle

    def device(self, name: str) -> torch.device:
        """`train.device` for this rank: under DDP auto / cuda / cuda:N all mean cuda:LOCAL_RANK."""
        from .loop import resolve_device

        device = resolve_device(name)
        if self.parallel and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    # ------------------------------------------------------------ data and reductions

    def check_batch(self, batch_size: int) -> None:
        """The global micro-batch must split evenly over the ranks (checked before models load)."""
        if batch_size % self.size:
            raise InputError(f"train.batch_size={batch_size} is the global micro-batch and must be "
                             f"a multiple of the {self.size} processes")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
        if not self.parallel:
            return list(items)
        base, extra = divmod(len(items), self.size)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start:start + base + (self.rank < extra)])

    def gather(self, local: Sequence[T]) -> list[T]:
        """Every rank's list, concatenated in rank order: the inverse of `shard`."""
        if not self.parallel:
            return list(local)
        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(local))
        return [x for part in parts for x in part]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor; the input is left alone)."""
        if not self.parallel:
            return value
        out = value.detach().clone()
        if dist.get_backend() == "nccl":                 # nccl reduces CUDA tensors only
            out = out.cuda()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(value.device)

    # ------------------------------------------------------------ the model

    def wrap(self, model: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        """DDP around the trainable model (identity for one process). Frozen parameters (the vision
        tower, the base under LoRA) are not synchronised; `find_unused` must be set when a trainable
        parameter can miss a forward pass (tuning=full: the connector on a text-only slice)."""
        if not self.parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)

    @staticmethod
    def no_sync(model: torch.nn.Module, sync: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    # ------------------------------------------------------------ RNG (LoRA dropout) for resume

    def rng_states(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's RNG tensors for one checkpoint: rank 0's under their own names (a
        one-process resume reads those), rank r's also as `rank<r>.<name>`. Call on every rank."""
        if not self.parallel:
            return local
        parts: list = [None] * self.size
        dist.all_gather_object(parts, {k: v.cpu() for k, v in local.items()})
        out = dict(parts[0])
        for r, states in enumerate(parts):
            out.update({f"rank{r}.{k}": v.clone() for k, v in states.items()})   # no shared storage
        return out

    @property
    def rng_prefix(self) -> str:
        """Where this rank's RNG state lives in a checkpoint (see `rng_states`)."""
        return f"rank{self.rank}." if self.parallel else ""


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[tuple[World, torch.device]]:
    """Join the launcher's process group for the duration of the block (nccl on CUDA, gloo on CPU)
    and leave it afterwards; nested sessions reuse the outer one (the pipeline runs four stages in
    one group). Yields this process's `World` and training device."""
    world = World.from_env()
    device = world.device(device_name)
    owner = world.parallel and not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=world.rank, world_size=world.size, timeout=BARRIER_TIMEOUT)
    try:
        yield world, device
    finally:
        if owner:
            dist.destroy_process_group()


def current() -> World:
    """The world of the running session (one process when no group is initialised)."""
    return World.from_env() if dist.is_available() and dist.is_initialized() else World()
