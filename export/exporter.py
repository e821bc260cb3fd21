"""SOURCE → bundle folder: load, trace, (quantize), write the manifest, validate, report.

One function, `export_bundle(ExportConfig)`, behind `mmkp-export`. Everything is written into a
staging folder beside the output and renamed into place at the end, so an interrupted export
never leaves a half bundle under the requested name; a bundle whose validation failed is still
moved into place (for inspection) but its manifest says `"validation": {"status": "failed"}` and
the command exits non-zero.

int8 and float16 bundles are derived from an fp32 export (staged, validated against torch, then
deleted): the new graphs are written beside a copy of the embeddings and tokenizer, and the gate
is greedy keyphrase agreement with that fp32 bundle. SOURCE may also be an existing, validated
fp32 bundle: then nothing is traced again (`derive_bundle`), which on a real student saves minutes.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmkp_edge.bundle import verify_files
from mmkp_edge.errors import InputError
from mmkp_edge.graph_io import DECODER, GRAPH_FILES
from mmkp_edge.manifest import MANIFEST_NAME, Manifest

from .bundle_writer import build_manifest, hash_files, with_validation, write_tokenizer
from .families import family_for
from .graphs import DECODERS, decoder_kind, export_all
from .quantize import (EMBEDDING_GRAPH, QUANTIZED_GRAPHS, Int8Config, convert_fp16, quantize_embedding,
                       quantize_int8)
from .source import load_source
from .validate import (ValidateConfig, agreement_probe, check_agreement, check_greedy, check_logits,
                       probe_posts)

PRECISIONS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class ExportConfig:
    source: str                          # hub id, checkpoint folder, or run dir (merged/ or adapter/)
    out: str                             # bundle folder to create
    precision: str = "fp32"              # fp32 (CPU) | int8 (weight-only MatMulNBits, CPU) | fp16 (GPU)
    overwrite: bool = False              # replace an existing bundle folder at `out`
    validate: bool = True                # run export's checks (a failure fails the export)
    stage: str | None = None             # training stage to record (default: from the run dir)
    decoder: str = "auto"                # decoder graph: fused contrib ops where the model allows
                                         # (export/fused_decoder.py; fp32 / int8), else traced; or
                                         # force one
    int8: Int8Config = field(default_factory=Int8Config)
    checks: ValidateConfig = field(default_factory=ValidateConfig)

    def check(self) -> "ExportConfig":
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.decoder not in DECODERS:
            raise InputError(f"decoder must be one of {', '.join(DECODERS)}")
        try:
            self.int8.validate()
            self.checks.validate()
        except ValueError as exc:
            raise InputError(str(exc)) from None
        out = Path(self.out)
        if out.exists():
            if not self.overwrite:
                raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
            if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
                raise InputError(f"{out}: exists and is not a bundle folder; refusing to replace it")
        return self


@dataclass
class ExportReport:
    bundle: str
    precision: str
    status: str                          # passed | failed | skipped
    files: dict[str, int]                # file name → bytes
    total_bytes: int
    graph_seconds: dict[str, float]      # tracing time per graph (the fp32 export)
    wall_seconds: float
    validation: dict

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict:
        return asdict(self)


def _derive(fp32_dir: Path, out_dir: Path, cfg: ExportConfig, say) -> dict | None:
    """Write the int8 / fp16 graphs of `fp32_dir` into `out_dir`; returns `quantization`."""
    shutil.copy2(fp32_dir / "tokenizer.json", out_dir / "tokenizer.json")
    if cfg.precision == "fp16":
        for name, file in GRAPH_FILES.items():
            say(f"float16: {name}")
            convert_fp16(fp32_dir / file, out_dir / file)
        return None
    nodes = {}
    for name, file in GRAPH_FILES.items():
        if name in QUANTIZED_GRAPHS:
            nodes[name] = quantize_int8(fp32_dir / file, out_dir / file, cfg.int8,
                                        decoder=name == DECODER)
            say(f"int8: {name}: {nodes[name]} MatMulNBits")
        elif name == EMBEDDING_GRAPH and not cfg.int8.keep_embeddings:
            rows = quantize_embedding(fp32_dir / file, out_dir / file, cfg.int8.block_size)
            say(f"int8: {name}: {rows} rows")
        else:
            for part in (file, file + ".data"):
                if (fp32_dir / part).exists():
                    shutil.copy2(fp32_dir / part, out_dir / part)
    return cfg.int8.describe(nodes)


def _publish(staged: Path, out: Path) -> None:
    """Move the finished bundle into place (replacing an old bundle when --overwrite allowed it)."""
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)


def _report(cfg: ExportConfig, out: Path, validation: dict, graph_seconds: dict[str, float],
            start: float) -> ExportReport:
    files = {name: info.bytes for name, info in hash_files(out).items()}
    return ExportReport(bundle=str(out), precision=cfg.precision, status=validation["status"],
                        files=files, total_bytes=sum(files.values()), graph_seconds=graph_seconds,
                        wall_seconds=round(time.perf_counter() - start, 2), validation=validation)


def export_bundle(cfg: ExportConfig, progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export (and by default validate) the bundle described by `cfg`."""
    say = progress or (lambda _msg: None)
    cfg.check()
    if (Path(cfg.source) / MANIFEST_NAME).is_file():
        return derive_bundle(cfg, say)
    start = time.perf_counter()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"loading {cfg.source}")
    src = load_source(cfg.source, cfg.stage)
    family = family_for(src.family.name)
    parts = family.graph_modules(src.model, family.vision_size(src))
    # fp16 bundles are for CUDA, where the fused graph (GroupQueryAttention with attention_bias
    # over a left-padded batch) has not been checked yet: auto keeps them traced
    requested = "traced" if cfg.precision == "fp16" and cfg.decoder == "auto" else cfg.decoder
    try:
        decoder = decoder_kind(parts, requested)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        fp32_dir = tmp / "fp32"
        fp32_dir.mkdir()
        graphs = export_all(parts, fp32_dir, progress=say, decoder=decoder)
        write_tokenizer(src, fp32_dir)
        target = fp32_dir
        quantization = None
        if cfg.precision != "fp32":
            target = tmp / cfg.precision
            target.mkdir()
            quantization = _derive(fp32_dir, target, cfg, say)
        dtype = "float16" if cfg.precision == "fp16" else "float32"
        manifest = build_manifest(src, parts.shape, target, dtype=dtype, quantization=quantization,
                                  decoder=decoder)
        manifest.save(target)
        if cfg.precision != "fp32":                                        # the agreement reference
            build_manifest(src, parts.shape, fp32_dir, decoder=decoder).save(fp32_dir)
        validation = {"status": "skipped"}
        if cfg.validate:
            validation = _validate(src, parts, fp32_dir, target, tmp, cfg, say)
        with_validation(manifest, validation).save(target)
        _publish(target, out)
    return _report(cfg, out, validation, {n: round(g.seconds, 2) for n, g in graphs.items()}, start)


def derive_bundle(cfg: ExportConfig, say: Callable[[str], None]) -> ExportReport:
    """int8 / fp16 bundle from an existing, validated fp32 bundle at `cfg.source` — no torch, no
    re-tracing (minutes on a real student). Its manifest is carried over; the gate is agreement."""
    start = time.perf_counter()
    source, out = Path(cfg.source), Path(cfg.out)
    reference = Manifest.load(source)
    verify_files(source, reference)
    if cfg.precision == "fp32":
        raise InputError(f"{source}: is already a bundle; give --int8 or --fp16 to derive one "
                         "from it, or export the checkpoint itself")
    if reference.dtype != "float32" or reference.quantization:
        raise InputError(f"{source}: is a {reference.dtype}"
                         f"{' quantized' if reference.quantization else ''} bundle; derive only "
                         "from an fp32 bundle")
    if reference.validation.get("status") != "passed":
        raise InputError(f"{source}: its validation is {reference.validation.get('status')!r}; "
                         "derive only from a bundle whose export checks passed")
    say(f"deriving {cfg.precision} from the fp32 bundle {source}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        target = tmp / cfg.precision
        target.mkdir()
        quantization = _derive(source, target, cfg, say)
        manifest = dataclasses.replace(
            reference, files=hash_files(target), quantization=quantization,
            dtype="float16" if cfg.precision == "fp16" else "float32",
            validation={"status": "pending"})
        manifest.save(target)
        validation = {"status": "skipped"}
        if cfg.validate:
            posts = agreement_probe(tmp / "probe", cfg.checks)
            say(f"validating: {cfg.precision} keyphrase agreement with fp32 ({len(posts)} posts)")
            agreement = _guarded(lambda: check_agreement(source, target, posts, cfg.checks))
            validation = {"status": "passed" if agreement["passed"] else "failed",
                          "reference": {"bundle": str(source), **reference.validation},
                          "agreement": agreement}
        with_validation(manifest, validation).save(target)
        _publish(target, out)
    return _report(cfg, out, validation, {}, start)


def _guarded(check: Callable[[], dict]) -> dict:
    """Run one check; a check that crashes (e.g. the runtime refuses the bundle) is a failed check,
    recorded with its reason, so the bundle is still written and marked failed."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 — any crash here means the bundle is not servable
        return {"passed": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


def _validate(src, parts, fp32_dir: Path, target: Path, tmp: Path,
              cfg: ExportConfig, say) -> dict:
    checks = cfg.checks
    posts = probe_posts(tmp / "probe", checks.probe_posts)
    say("validating: ORT vs torch logits")
    result: dict = {"logits": _guarded(lambda: check_logits(parts, fp32_dir, checks.rtol))}
    say(f"validating: greedy tokens, runtime vs torch ({len(posts)} posts, left-padded)")
    result["greedy"] = _guarded(lambda: check_greedy(src.model, src.processor, fp32_dir, posts, checks))
    if cfg.precision != "fp32":
        probe = agreement_probe(tmp / "agreement", checks)
        say(f"validating: {cfg.precision} keyphrase agreement with fp32 ({len(probe)} posts)")
        result["agreement"] = _guarded(lambda: check_agreement(fp32_dir, target, probe, checks))
    passed = all(part["passed"] for part in result.values())
    return {"status": "passed" if passed else "failed", **result}
