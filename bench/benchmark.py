"""One benchmark run: workload → bandwidth → each variant timed → agreement → headline figures.

`run_benchmark(BenchConfig)` is the library call behind `mmkp-bench`; it returns one JSON-ready dict
(every figure carries its unit in its name: _ms, _s, _bytes, _per_s). Variants run one after the
other — the bundles, then llama.cpp on each GGUF (optional), then torch — each loaded, measured and
released before the next, so a variant's peak RSS is its own (plus the interpreter and whatever
libraries are already imported — the torch variant runs last because importing torch alone costs
hundreds of MB). The first bundle is the agreement reference, and gives llama.cpp its prompt text.
"""

from __future__ import annotations

import gc
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmkp_edge.errors import InputError

from .agreement import agreement_table
from .gguf_model import check_gguf, file_type
from .floor import Bandwidth, copy_bandwidth, decoder_weight_bytes, floor_ms
from .machine import machine_facts
from .timing import Measurement, PeakRSS, TimingConfig, measure
from .torch_baseline import check_torch_source
from .workload import WorkloadConfig, describe, load_workload

UNITS = {"_ms": "milliseconds", "_s": "seconds", "_bytes": "bytes", "_mb": "megabytes (1e6 bytes)",
         "_per_s": "per second", "_gb_per_s": "gigabytes (1e9 bytes) per second",
         "floor_multiple": "measured decode step ÷ memory floor", "agreement": "share of posts (0..1)",
         "tokens_per_post": "generated tokens per post, stop id included"}


@dataclass(frozen=True)
class BenchConfig:
    bundles: tuple[str, ...]                   # bundle folders; the first is the agreement reference
    torch_model: str | None = None             # checkpoint / run dir for the torch baseline
    llama_cpp: tuple[str, ...] = ()            # GGUF files for llama.cpp variants (llama extra)
    threads: int | None = None                 # intra-op threads, ORT and torch (None: their default)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    bandwidth_mb: int = 256                    # copy-test buffer
    verify: bool = True                        # sha256-check bundles; refuse failed validation
    reuse_prefix: bool = True                  # bundles prefill from the prompt prefix's cached K/V

    def validate(self) -> "BenchConfig":
        if not self.bundles:
            raise InputError("give at least one bundle folder")
        for b in self.bundles:
            if not (Path(b) / "manifest.json").is_file():
                raise InputError(f"{b}: not a bundle folder (no manifest.json)")
            status = json.loads((Path(b) / "manifest.json").read_text()).get("validation") or {}
            if self.verify and status.get("status") == "failed":   # refuse before minutes of timing
                raise InputError(f"{b}: this bundle failed export validation; benchmark it anyway "
                                 f"with --no-verify")
        for gguf in self.llama_cpp:
            check_gguf(gguf)                           # fail before minutes of ORT timing
        if self.torch_model is not None:
            check_torch_source(self.torch_model)       # fail before minutes of ORT timing
        if self.threads is not None and self.threads < 1:
            raise InputError("threads must be at least 1")
        if self.bandwidth_mb < 16:
            raise InputError("bandwidth buffer must be at least 16 MB (larger than the caches)")
        self.workload.validate()
        self.timing.validate()
        return self


def unique_names(labels: list[str], paths: tuple[str, ...]) -> list[str]:
    """Labels made unique: the file or folder name is added when labels clash, then a number."""
    counts = Counter(labels)
    names = [f"{lab} ({Path(p).name})" if counts[lab] > 1 else lab for lab, p in zip(labels, paths)]
    seen = Counter(names)
    return [f"{n} #{i + 1}" if seen[n] > 1 else n for i, n in enumerate(names)]


def variant_names(bundles: tuple[str, ...]) -> list[str]:
    """'ort fp32', 'ort int8', … from the manifests; the folder name is added when labels clash."""
    labels = []
    for b in bundles:
        m = json.loads((Path(b) / "manifest.json").read_text())
        q = m.get("quantization")
        dtype = {"float32": "fp32", "float16": "fp16"}.get(m.get("dtype"), "fp32")
        kind = f"int{q['bits']}" if q else dtype
        labels.append(f"ort {kind}")
    return unique_names(labels, bundles)


def llama_names(ggufs: tuple[str, ...]) -> list[str]:
    """'llama.cpp Q8_0', 'llama.cpp F32', … from each GGUF's file type."""
    return unique_names([f"llama.cpp {file_type(g)}" for g in ggufs], ggufs)


def headline(variants: list[dict], measurements: list[Measurement], agreement: list[dict]) -> dict:
    """The issue's targets, as ratios: speed-up over torch, batch scaling, floor, size, agreement,
    and each ORT variant's decode step and time to first token ÷ each llama.cpp variant's (below 1:
    the runtime is faster). Each is a dict "variant think=mode" → value, taken at the smallest and
    largest batch sizes."""
    rows = {(m.variant, m.batch_size, m.think): m for m in measurements}
    sizes = sorted({m.batch_size for m in measurements})
    small, large = sizes[0], sizes[-1]
    thinks = list(dict.fromkeys(m.think for m in measurements))
    ort = [v["name"] for v in variants if v["kind"] == "onnxruntime"]
    torch_name = next((v["name"] for v in variants if v["kind"] == "torch"), None)
    llama = [v["name"] for v in variants if v["kind"] == "llama.cpp"]

    def table(names, value) -> dict:
        """value(name, think) → number or None (skipped), for every name × think."""
        out = {}
        for name in names:
            for think in thinks:
                v = value(name, think)
                if v is not None:
                    out[f"{name} think={think}"] = round(v, 4)
        return out

    def ratio(a, b, key) -> float | None:
        return getattr(a, key) / getattr(b, key) if a and b and getattr(b, key) else None

    out: dict = {}
    if torch_name:
        out[f"speedup_vs_torch_end_to_end_batch{small}"] = table(
            ort, lambda n, t: ratio(rows.get((n, small, t)), rows.get((torch_name, small, t)),
                                    "posts_per_s"))
    if large != small:
        every = [v["name"] for v in variants]
        out[f"throughput_batch{large}_over_batch{small}"] = table(
            every, lambda n, t: ratio(rows.get((n, large, t)), rows.get((n, small, t)), "tokens_per_s"))
        out[f"decode_throughput_batch{large}_over_batch{small}"] = table(
            every, lambda n, t: ratio(rows.get((n, small, t)), rows.get((n, large, t)),
                                      "decode_ms_per_token"))
    for ref in llama:
        for size in dict.fromkeys((small, large)):
            for key in ("decode_ms_per_step", "ttft_ms"):
                out[f"{key}_vs_{ref}_batch{size}"] = table(
                    ort, lambda n, t, r=ref, b=size, k=key: ratio(rows.get((n, b, t)),
                                                                  rows.get((r, b, t)), k))
    out[f"decode_floor_multiple_batch{small}"] = table(
        ort, lambda n, t: rows[(n, small, t)].floor_multiple if (n, small, t) in rows else None)
    sizes_by_name = {v["name"]: v["bundle_bytes"] for v in variants if v["kind"] == "onnxruntime"}
    if len(ort) > 1:
        out["bundle_bytes_ratio_vs_first"] = {n: round(sizes_by_name[n] / sizes_by_name[ort[0]], 4)
                                              for n in ort[1:]}
    out["keyphrase_agreement_vs_first"] = {f"{a['variant']} think={a['think']}": a["keyphrase_agreement"]
                                           for a in agreement}
    out["token_prefix_agreement_vs_first"] = {f"{a['variant']} think={a['think']}":
                                              round(a["token_prefix_agreement"], 4) for a in agreement}
    return out


def _measure_variant(make: Callable[[], object], posts, cfg: BenchConfig, bandwidth: Bandwidth,
                     weight_bytes: int | None, say) -> tuple[dict, list[Measurement]]:
    with PeakRSS() as rss:
        variant = make()
        results = measure(variant, posts, cfg.timing, say)
    if weight_bytes is None:                  # llama.cpp knows its own weight bytes once loaded
        weight_bytes = getattr(variant, "weight_bytes", None)
    info = {"name": variant.name, **variant.describe(),
            "rss_before_load_mb": round(rss.start_bytes / 1e6, 1),
            "peak_rss_mb": round(rss.peak_bytes / 1e6, 1),
            "peak_rss_growth_mb": round((rss.peak_bytes - rss.start_bytes) / 1e6, 1)}
    if weight_bytes is not None:
        fl = floor_ms(weight_bytes, bandwidth)
        info.update(decoder_weight_bytes=weight_bytes, floor_ms_per_step=round(fl, 3))
        for m in results:
            m.floor_multiple = m.decode_ms_per_step / fl
    del variant
    gc.collect()
    return info, results


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every variant of `cfg`; see the module docstring. Returns the JSON-ready report."""
    from .bundle_variant import BundleVariant
    from .llama_cpp_variant import LlamaCppVariant
    from .torch_baseline import TorchVariant

    say = progress or (lambda _msg, _transient=False: None)
    cfg.validate()
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="mmkp-bench-") as tmp:
        posts = load_workload(cfg.workload, Path(tmp) / "images")
        say(f"workload: {len(posts)} posts ({sum(p.image is not None for p in posts)} with an image)")
        say(f"memory bandwidth: copying {cfg.bandwidth_mb} MB …")
        bandwidth = copy_bandwidth(cfg.bandwidth_mb, threads=cfg.threads or facts["usable_cores"] or 1)
        say(f"memory bandwidth: {bandwidth.bytes_per_s / 1e9:.1f} GB/s")
        variants, measurements = [], []
        for path, name in zip(cfg.bundles, variant_names(cfg.bundles)):
            say(f"{name}: loading {path}")
            make = lambda p=path, n=name: BundleVariant(p, n, cfg.threads, cfg.verify,
                                                                cfg.reuse_prefix)   # noqa: E731
            info, results = _measure_variant(make, posts, cfg, bandwidth, decoder_weight_bytes(path), say)
            variants.append(info)
            measurements += results
        for path, name in zip(cfg.llama_cpp, llama_names(cfg.llama_cpp)):
            say(f"{name}: loading {path}")
            images = sum(p.image is not None for p in posts)
            if images:
                say(f"{name}: llama.cpp cannot see images: {images} of {len(posts)} posts run text-only")
            make = lambda p=path, n=name: LlamaCppVariant(p, n, cfg.threads, cfg.bundles[0])  # noqa: E731
            info, results = _measure_variant(make, posts, cfg, bandwidth, None, say)
            variants.append(info)
            measurements += results
        if cfg.torch_model:
            say(f"torch eager: loading {cfg.torch_model}")
            info, results = _measure_variant(lambda: TorchVariant(cfg.torch_model, threads=cfg.threads),
                                             posts, cfg, bandwidth, None, say)
            variants.append(info)
            measurements += results
        workload = describe(posts)
    agreement = agreement_table(measurements)
    return {
        "benchmark": "mmkp-bench", "machine": facts,
        "config": {"bundles": list(cfg.bundles), "torch_model": cfg.torch_model,
                   "llama_cpp": list(cfg.llama_cpp), "threads": cfg.threads,
                   "verify": cfg.verify, "reuse_prefix": cfg.reuse_prefix,
                   "workload": asdict(cfg.workload), "timing": asdict(cfg.timing)},
        "workload": workload, "bandwidth": bandwidth.to_json(), "variants": variants,
        "measurements": [m.to_json() for m in measurements], "agreement": agreement,
        "headline": headline(variants, measurements, agreement), "units": UNITS,
    }
