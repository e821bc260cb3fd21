"""SOURCE → MLX bundle for Apple devices: merge, save a HF checkpoint, convert with mlx-vlm, add our
manifest, validate against the PyTorch student.

`mmkp-export SOURCE -o DIR --mlx [--q-bits 8|4]`. The student is loaded and merged exactly as for
the ONNX export (export.source.load_source), saved as a plain HF checkpoint in a staging folder,
and handed to mlx-vlm's converter (`mlx_vlm.convert`, remote code off). mlx-vlm decides what it
quantizes: the language model's linear layers and embeddings; the vision tower stays in full
precision (its default). Our manifest (backend "mlx", prompt hash, chat pieces, special and think
token ids, image preprocessing) is written beside mlx-vlm's files, so `mmkp-predict --bundle DIR`
serves it with the same prompt ids, parser and think modes as an ONNX bundle.

Two fixes the converted checkpoint needs: the tokenizer is rewritten without padding/truncation
(as for ONNX), and `text_config.rope_theta` is written out flat — transformers 5 saves it under
`rope_parameters`, which mlx-vlm's Idefics3 config does not read (it would silently fall back to
a base of 1e6 and every position would be wrong).

Validation (on by default) runs the bundle through the MLX runtime on the probe posts as one
left-padded batch and compares with train.generation.generate_batch (the fp32 PyTorch student):
an unquantized bundle must produce identical greedy tokens; a quantized one reports token and
keyphrase agreement and is gated, like ONNX int8, on keyphrase agreement ≥ min_agreement (a
failed bundle is still written, marked "failed" in its manifest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mmkp_edge.errors import InputError
from mmkp_edge.mlx_backend import INSTALL_HINT, hf_auto_processor_untouched, rope_theta
from mmkp_edge.parser import parse
from mmkp_edge.phrases import stem_key

from .bundle_writer import build_manifest, hash_files, with_validation, write_tokenizer
from .exporter import ExportConfig, ExportReport
from .source import Source, load_source
from .validate import ValidateConfig, probe_posts, rules, runtime_tokens
from .wrappers import decoder_shape

Q_BITS = (8, 4)


@dataclass(frozen=True)
class MlxExportConfig:
    source: str                          # hub id, checkpoint folder, or run dir (merged/ or adapter/)
    out: str                             # bundle folder to create
    q_bits: int | None = None            # None: float32 weights; 8 | 4: mlx affine weight quantization
    group_size: int = 64                 # weights per quantization scale (mlx-vlm's default)
    overwrite: bool = False              # replace an existing bundle folder at `out`
    validate: bool = True                # compare with the PyTorch student's greedy output
    stage: str | None = None             # training stage to record (default: from the run dir)
    checks: ValidateConfig = field(default_factory=ValidateConfig)

    @property
    def precision(self) -> str:
        return "mlx-fp32" if self.q_bits is None else f"mlx-int{self.q_bits}"

    def check(self) -> "MlxExportConfig":
        if self.q_bits not in (None, *Q_BITS):
            raise InputError(f"--q-bits must be one of {', '.join(map(str, Q_BITS))}; got {self.q_bits}")
        if self.group_size not in (32, 64, 128):
            raise InputError(f"group size must be 32, 64 or 128; got {self.group_size}")
        # the output-folder refusals are the ONNX export's
        ExportConfig(source=self.source, out=self.out, overwrite=self.overwrite,
                     checks=self.checks).check()
        return self


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("mlx", "mlx-vlm")}


def save_checkpoint(src: Source, folder: Path) -> Path:
    """The merged student as a plain HF checkpoint (safetensors + processor): mlx-vlm's input."""
    src.model.save_pretrained(folder, safe_serialization=True)
    src.processor.save_pretrained(folder)
    return folder


def convert(checkpoint: Path, out: Path, cfg: MlxExportConfig) -> str:
    """Run mlx-vlm's converter (its chatter captured and returned, not printed)."""
    try:
        from mlx_vlm.convert import convert as mlx_convert
    except ImportError as exc:
        raise InputError(f"--mlx needs mlx-vlm ({exc.name} is missing): {INSTALL_HINT}") from None
    log = io.StringIO()
    with contextlib.redirect_stdout(log), hf_auto_processor_untouched():
        mlx_convert(str(checkpoint), mlx_path=str(out), quantize=cfg.q_bits is not None,
                    q_bits=cfg.q_bits or 8, q_group_size=cfg.group_size, trust_remote_code=False)
    return log.getvalue()


def fix_config(folder: Path) -> float:
    """Write `text_config.rope_theta` flat (see the module docstring); returns it."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    theta = rope_theta(config["text_config"])
    config["text_config"]["rope_theta"] = theta
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return theta


def quantized_modules(folder: Path) -> list[str]:
    """Modules stored quantized (they have `.scales`), from the safetensors headers."""
    from safetensors import safe_open

    names = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as fh:
            names += [k[: -len(".scales")] for k in fh.keys() if k.endswith(".scales")]
    return sorted(names)


def quantization_info(folder: Path, cfg: MlxExportConfig) -> dict | None:
    if cfg.q_bits is None:
        return None
    names = quantized_modules(folder)
    return {"method": "mlx-affine", "bits": cfg.q_bits, "group_size": cfg.group_size,
            "quantized_modules": len(names),
            "vision_quantized": any("vision_model" in n for n in names),
            "connector_quantized": any(n.startswith("connector") for n in names)}


def check_against_torch(src: Source, bundle: Path, posts, cfg: MlxExportConfig) -> dict:
    """MLX runtime vs PyTorch greedy output on one left-padded batch of probe posts.

    Returns `greedy` (identical token sequences up to the stop ids; the gate of an unquantized
    bundle) and, for a quantized bundle, `agreement` (share of posts with the same stemmed
    keyphrases; its gate, as for ONNX int8)."""
    from train.generation import generate_batch

    preds, manifest = runtime_tokens(bundle, posts, cfg.checks)
    reference = generate_batch(src.model, src.processor, posts, think=cfg.checks.think,
                               max_new_tokens=cfg.checks.new_tokens)
    r = rules(manifest, cfg.checks)
    same_tokens = same_kp = 0
    mismatches = []
    for post, ref, got in zip(posts, reference, preds):
        a, b = r.cut(ref.token_ids), r.cut(got.token_ids)
        same_tokens += a == b
        same_kp += ([stem_key(k) for k in parse(ref.text).keyphrases]
                    == [stem_key(k) for k in got.keyphrases])
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            mismatches.append({"id": post.id, "first_diff_at": first, "torch": a, "runtime": b})
    n = len(posts)
    result = {"greedy": {"posts": n, "with_image": sum(p.image is not None for p in posts),
                         "new_tokens": cfg.checks.new_tokens, "identical": same_tokens,
                         "passed": same_tokens == n, "mismatches": mismatches[:3]}}
    if cfg.q_bits is not None:
        result["agreement"] = {"posts": n, "keyphrase_agreement": same_kp / n,
                               "token_sequence_agreement": same_tokens / n,
                               "min_agreement": cfg.checks.min_agreement,
                               "passed": same_kp / n >= cfg.checks.min_agreement}
    return result


def export_mlx(cfg: MlxExportConfig, progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export (and by default validate) an MLX bundle; same staging/report rules as ONNX."""
    say = progress or (lambda _msg: None)
    cfg.check()
    start = time.perf_counter()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"loading {cfg.source}")
    src = load_source(cfg.source, cfg.stage)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        checkpoint = save_checkpoint(src, tmp / "hf")
        target = tmp / "mlx"
        say(f"mlx-vlm: converting ({cfg.precision})")
        t0 = time.perf_counter()
        convert(checkpoint, target, cfg)
        seconds = time.perf_counter() - t0
        write_tokenizer(src, target)
        theta = fix_config(target)
        manifest = dataclasses.replace(
            build_manifest(src, decoder_shape(src.model), target, dtype="float32",
                           quantization=quantization_info(target, cfg)),
            graphs={}, backend="mlx")
        manifest.save(target)
        validation: dict = {"status": "skipped"}
        if cfg.validate:
            posts = probe_posts(tmp / "probe", cfg.checks.probe_posts)
            say(f"validating: MLX runtime vs torch greedy ({len(posts)} posts, left-padded)")
            checks = check_against_torch(src, target, posts, cfg)
            gate = checks["greedy" if cfg.q_bits is None else "agreement"]
            validation = {"status": "passed" if gate["passed"] else "failed", **checks}
        validation["converter"] = {**_versions(), "rope_theta": theta}
        with_validation(manifest, validation).save(target)
        if out.exists():
            shutil.rmtree(out)
        target.rename(out)
    files = {name: info.bytes for name, info in hash_files(out).items()}
    return ExportReport(bundle=str(out), precision=cfg.precision, status=validation["status"],
                        files=files, total_bytes=sum(files.values()),
                        graph_seconds={"mlx_convert": round(seconds, 2)},
                        wall_seconds=round(time.perf_counter() - start, 2), validation=validation)
