"""LoRA on the student's language model (peft), and merging an adapter into a plain checkpoint.

Only the decoder's linear layers get adapters (the family names them); the vision tower and
connector stay frozen unless `vision=True`. Adapters are saved in peft's own format beside the
processor, so `merge` (and `load_student` on a run dir) needs nothing but the adapter folder: the
base checkpoint is the one peft recorded in `adapter_config.json`. The merged checkpoint is ordinary
safetensors that `from_pretrained` loads and the exporter consumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

from mmkp_edge.errors import InputError

from .families import StudentFamily


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16                               # adapter rank
    alpha: int = 32                           # scaling numerator (scale = alpha / r)
    dropout: float = 0.05                     # dropout on the adapter input
    targets: tuple[str, ...] | None = None    # LM linear-layer names; None = family default
    vision: bool = False                      # also adapt the vision tower (frozen by default)

    def validate(self) -> "LoraSettings":
        if self.r < 1 or self.alpha <= 0:
            raise InputError(f"lora: r must be >= 1 and alpha > 0 (got r={self.r}, alpha={self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        if self.targets is not None and not self.targets:
            raise InputError("lora: targets must name at least one module (or be left unset)")
        return self


def token_rows(model, tokenizer, family: StudentFamily | None = None) -> dict[str, list[int]] | None:
    """peft `trainable_token_indices`: the contract's rows (`train.tokens.trainable_token_ids`) in
    the input embedding, and in lm_head too when it is not tied to it (peft follows a tied head)."""
    if tokenizer is None:
        return None
    from .tokens import trainable_token_ids

    ids = trainable_token_ids(tokenizer, family.image_wrapper_tokens if family else ())
    rows = {"embed_tokens": ids}
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["lm_head"] = ids
    return rows


def apply_lora(model, family: StudentFamily, settings: LoraSettings = LoraSettings(),
               tokenizer=None):
    """Wrap `model` in a trainable peft model; every base parameter ends up frozen except the
    contract's token rows (`token_rows`) when the tokenizer is given."""
    from peft import LoraConfig, get_peft_model

    settings.validate()
    targets = settings.targets or family.default_lora_targets
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=family.lora_target_regex(tuple(targets), settings.vision),
                        bias="none", trainable_token_indices=token_rows(model, tokenizer, family))
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:   # peft: "Target modules ... not found in the base model"
        raise InputError(f"lora: {str(exc).splitlines()[0]}") from None
    for module in family.vision_modules(peft_model) if not settings.vision else ():
        for p in module.parameters():
            p.requires_grad_(False)
    return peft_model


def trainable_parameters(model) -> dict[str, int]:
    """{"trainable": n, "total": n} parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": total}


def save_adapter(model, processor, out: str | os.PathLike) -> Path:
    """Write the adapter (peft format, safetensors) and the processor to `out`."""
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def load_adapter(base_model, adapter_dir: str | os.PathLike, trainable: bool = False):
    """Put a saved adapter on `base_model` (frozen unless `trainable`, e.g. to continue training)."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir}: no adapter_config.json (not a peft adapter)")
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)


def merge(run_or_adapter: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Merge an adapter (a run dir with `adapter/`, or the adapter folder) into its base and save a
    plain checkpoint + processor at `out` (default `<run dir>/merged`). Returns `out`."""
    from .student import ADAPTER_DIR, MERGED_DIR, load_student, resolve_source

    source = Path(run_or_adapter)
    adapter_dir = source / ADAPTER_DIR if (source / ADAPTER_DIR).is_dir() else source
    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(f"{run_or_adapter}: no peft adapter (adapter_config.json) here or in "
                         f"{ADAPTER_DIR}/")
    if out is None:
        if adapter_dir == source:
            raise InputError("merge: give -o OUT when merging a bare adapter folder")
        out = source / MERGED_DIR
    base, _ = resolve_source(json.loads((adapter_dir / "adapter_config.json")
                                        .read_text(encoding="utf-8"))["base_model_name_or_path"])
    student = load_student(adapter_dir)        # base checkpoint + adapter (fp32, eval)
    merged = student.model.merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out, safe_serialization=True)
    student.processor.save_pretrained(out)
    (out / "merged_from.json").write_text(json.dumps(
        {"base": base, "adapter": str(adapter_dir.resolve()), "family": student.family.name},
        indent=2) + "\n", encoding="utf-8")
    return out


@click.command("merge")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Output checkpoint folder [default: ADAPTER_DIR/merged for a run dir].")
def merge_command(adapter_dir: str, out: str | None) -> None:
    """Merge a LoRA adapter into its base model and write a plain safetensors checkpoint.

    \b
    Example:
      mmkp-train merge runs/sft/demo -o runs/sft/demo/merged
    """
    click.echo(str(merge(adapter_dir, out)))
