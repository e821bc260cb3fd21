"""An exported bundle as a benchmark variant: the torch-free runtime, timed through `Generator.step()`.

This is exactly what `mmkp-predict` runs (KeyphrasePredictor.request → generator → step), driven
step by step so the first step (vision + prefill) and every later step (one token for each row
still running; finished rows are evicted) are timed from the same primitive. Forced (`force=True`),
the generator ignores the stop ids and every row runs its whole budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmkp_edge import prompt
from mmkp_edge.decoding import rules_for_manifest
from mmkp_edge.parser import parse
from mmkp_edge.posts import Post
from mmkp_edge.predictor import KeyphrasePredictor

from .timing import BatchRun, PostOutput, clock


def bundle_bytes(path: str | Path) -> int:
    """Bytes on disk of every file in the bundle folder."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


class BundleVariant:
    def __init__(self, path: str | Path, name: str, threads: int | None = None, verify: bool = True,
                 reuse_prefix: bool = True):
        self.path = Path(path)
        self.reuse_prefix = reuse_prefix   # prefill from the shared prompt prefix's cached K/V
        self.name = name
        start = clock()
        self.predictor = KeyphrasePredictor.from_bundle(path, threads=threads, verify=verify)
        self.load_s = clock() - start
        self.manifest = self.predictor.manifest

    def describe(self) -> dict:
        q = self.manifest.quantization
        return {"kind": "onnxruntime", "path": str(self.path), "dtype": self.manifest.dtype,
                "quantization": (f"int{q['bits']} {q['method']} block {q['block_size']}" if q else None),
                "bundle_bytes": bundle_bytes(self.path), "load_s": round(self.load_s, 3),
                "decoder": self.manifest.model.decoder, "reuse_prefix": self.reuse_prefix}

    def output(self, tokens: list[int], think: str) -> PostOutput:
        # keyphrases from the tokens up to the first stop (a forced row ran past it)
        answer = rules_for_manifest(self.manifest.special_tokens, think).cut(tokens)
        text = prompt.prime(think) + self.predictor.bundle.encoder.decode(answer, self.predictor.tags)
        parsed = parse(text)
        return PostOutput(tokens=list(tokens), keyphrases=parsed.keyphrases, thought=parsed.thought)

    def run_batch(self, posts: Sequence[Post], think: str, max_new_tokens: int,
                  force: bool = False) -> BatchRun:
        t0 = clock()
        requests = [self.predictor.request(p, think, max_new_tokens) for p in posts]
        prep = clock() - t0
        gen = self.predictor.generator(requests, think, max_new_tokens, stops=not force,
                                       reuse_prefix=self.reuse_prefix)
        finish = [0.0] * len(posts)
        ttft = None
        while not gen.done:
            emitted = gen.step()
            now = clock() - t0
            ttft = now if ttft is None else ttft
            for req, _ in emitted:
                if gen.outputs[req].finish:
                    finish[req] = now
        end = clock() - t0
        return BatchRun(prep_s=prep, ttft_s=ttft, end_s=end, decode_steps=gen.times.steps - 1,
                        finish_s=finish, outputs=[self.output(o.tokens, think) for o in gen.outputs])
