"""Resumable training state, saved without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is everything that decides the *next* step, so an interrupted run continues with
exactly the losses an uninterrupted one would have logged: the trainable weights (LoRA adapters or
the fully fine-tuned parameters), AdamW's moments and step counts, the torch RNG states (LoRA
dropout), the optimizer step (which fixes the learning rate and the data position, see
`train.loop`) and the target plan's state (the Dynamic-CoT gate's loss window, the offline mix).

`torch.save` would pickle; instead optimizer state tensors are flattened to `state.<param>.<key>`
safetensors entries and its hyper-parameters go to JSON. Each checkpoint is written to a temporary
folder and renamed into place, so a crash mid-write never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmkp_edge.errors import InputError

PREFIX = "step-"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Resumed:
    step: int                   # optimizer steps already taken
    extra: dict                 # what the caller stored (plan state, elapsed time, …)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's RNG states (CPU, and every CUDA device) as checkpoint entries."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = state
    return out


def save_checkpoint(folder: str | os.PathLike, step: int, model, optimizer, extra: dict,
                    keep: int = 2, rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `<folder>/step-<step>/` atomically; keep only the newest `keep` checkpoints. `rng`
    replaces this process's RNG entries (DDP: every rank's, see `train.distributed`)."""
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = _trainable(model)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()},
              str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    tensors.update(rng_tensors() if rng is None else rng)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / STATE_FILE).write_text(json.dumps({
        "step": step, "param_names": list(params), "param_groups": opt["param_groups"],
        "scalar_state": scalars, "extra": extra}, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(checkpoints(folder))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())


def load_checkpoint(path: str | os.PathLike, model, optimizer, rng_prefix: str = "") -> Resumed:
    """Restore weights, optimizer and RNG state saved by `save_checkpoint` at `path`; the RNG
    entries are read under `rng_prefix` when present (a DDP rank's own), else unprefixed."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    params = _trainable(model)
    if list(params) != state["param_names"]:
        raise InputError(f"{path}: the checkpoint's trainable parameters do not match this model "
                         "(different LoRA settings or tuning mode?)")
    weights = load_file(str(path / "trainable.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    tensors = load_file(str(path / "optimizer.safetensors"))
    device = next(iter(params.values())).device
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless capturable/fused; moments live with the params
            opt_state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for key, value in state["scalar_state"].items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    prefix = rng_prefix if rng_prefix + "rng.cpu" in tensors else ""
    torch.set_rng_state(tensors[prefix + "rng.cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith(prefix + "rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return Resumed(step=int(state["step"]), extra=state["extra"])
