"""llama.cpp on a GGUF file as a benchmark variant: the engine a CPU decoding speed is judged against.

Same posts and the same prompt TEXT as the runtime — rendered from the reference bundle's manifest
and tokenizer by `mmkp_edge.predictor.text_prompt` (chat template, user text cut to fit, think
prime) — tokenized by llama.cpp's own tokenizer (special tokens parsed), greedy argmax, timed with
the harness's clock like every other variant. A batch of B posts is decoded together as B
sequences: one `llama_decode` for all the prompts, then one per step for every running row (its
own sequence id and positions). It drives llama-cpp-python's low-level C API, not its `Llama`
class, so nothing runs between the benchmark and `llama_decode` but this module.

What cannot be the same: llama.cpp never sees the student's vision tower, so a post with an image
runs text-only (counted in describe()); a GGUF of another model has no `<think>`/`<answer>` tokens,
so think=off masks nothing (the prime is still in the prompt) and a row stops at llama.cpp's
end-of-generation tokens or once its text closes `</answer>`. Forced, a row ignores both.

The KV cache belongs to a context (n_seq_max rows × a per-row length, not unified); a context is
built only when a batch needs more rows or longer rows than the current one, else cleared, and
building one is excluded from the batch's time like loading the model (describe() counts them).
Needs the `llama` extra (llama-cpp-python); bench.gguf_model loads the model.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmkp_edge import prompt
from mmkp_edge.chat import PromptEncoder
from mmkp_edge.errors import InputError
from mmkp_edge.manifest import Manifest
from mmkp_edge.parser import parse
from mmkp_edge.posts import Post
from mmkp_edge.predictor import text_prompt

from .gguf_model import load_model, require_llama, type_name
from .timing import BatchRun, PostOutput, clock

ROW_ALIGN = 256                       # llama.cpp rounds a sequence's KV length up to this
CLOSE = prompt.ANSWER_CLOSE.encode()


class Vocab:
    """llama.cpp's tokenizer and detokenizer for one model."""

    def __init__(self, model):
        self.L = require_llama()
        self.vocab = self.L.llama_model_get_vocab(model)
        self.size = self.L.llama_vocab_n_tokens(self.vocab)

    def encode(self, text: str, add_special: bool) -> list[int]:
        """Token ids of `text`; chat special tokens in it are parsed as tokens. `add_special`:
        the vocabulary's own BOS/EOS rule (the bundle tokenizer's add_special_tokens, mirrored)."""
        data = text.encode()
        cap = len(data) + 8
        while True:
            ids = (self.L.llama_token * cap)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), ids, cap, add_special, True)
            if n >= 0:
                return list(ids[:n])
            cap = -n                        # too small: llama.cpp says how many it needs

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control tokens render as nothing (the runtime's skip_special_tokens)."""
        arr = (self.L.llama_token * max(1, len(ids)))(*ids)
        cap = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = self.L.llama_detokenize(self.vocab, arr, len(ids), buf, cap, False, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n

    def piece(self, token: int) -> bytes:
        cap = 64
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, cap, 0, False)
            if n >= 0:
                return buf.raw[:n]
            cap = -n

    def is_eog(self, token: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))


class _Row:
    """One post's generated tokens, and whether they stopped: an end-of-generation token, or the
    text closed `</answer>` (the runtime's stop rule, read from text: this vocabulary may lack the tag)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.tokens: list[int] = []
        self.text = b""
        self.stop: int | None = None       # tokens up to the first stop (None: not stopped)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if self.stop is None:
            eog = self.vocab.is_eog(token)
            self.text += b"" if eog else self.vocab.piece(token)
            if eog or CLOSE in self.text:
                self.stop = len(self.tokens)

    @property
    def answer(self) -> list[int]:
        return self.tokens if self.stop is None else self.tokens[: self.stop]


class LlamaCppVariant:
    def __init__(self, gguf_path: str | os.PathLike, name: str, threads: int | None,
                 reference_bundle: str | os.PathLike):
        self.L = L = require_llama()
        self.path = Path(gguf_path)
        self.name = name
        self.threads = threads or _default_threads()
        root = Path(reference_bundle)                 # the prompt's text, without its ONNX graphs
        self.manifest = Manifest.load(root)
        self.encoder = PromptEncoder.from_file(root / self.manifest.tokenizer.file, self.manifest.chat,
                                               self.manifest.image, self.manifest.tokenizer)
        self.reference = str(root)
        start = clock()
        self.model = load_model(self.path)
        self.load_s = clock() - start
        self.vocab = Vocab(self.model)
        self.weight_bytes = int(L.llama_model_size(self.model))   # for the memory floor
        self.ctx = self.batch = None
        self.rows = self.row_len = 0                  # the context's capacity
        self.setups, self.setup_s = 0, 0.0
        self.prompt_tokens: dict[str, tuple[int, int]] = {}   # post id → (llama.cpp, bundle) tokens
        self.with_image: set[str] = set()             # posts answered text-only

    def __del__(self):
        self._free()
        if getattr(self, "model", None):
            self.L.llama_model_free(self.model)
            self.model = None

    def _free(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self.L.llama_free(self.ctx)
            self.ctx = None

    def describe(self) -> dict:
        buf = ctypes.create_string_buffer(128)
        self.L.llama_model_desc(self.model, buf, len(buf))
        counts = list(self.prompt_tokens.values())
        mean = lambda i: round(sum(c[i] for c in counts) / len(counts), 1) if counts else None  # noqa: E731
        return {"kind": "llama.cpp", "path": str(self.path), "dtype": type_name(self.model, self.path),
                "quantization": None, "model": buf.value.decode(),
                "parameters": int(self.L.llama_model_n_params(self.model)),
                "bundle_bytes": self.path.stat().st_size, "load_s": round(self.load_s, 3),
                "threads": self.threads, "reference_bundle": self.reference,
                "prompt_tokens_mean": mean(0), "reference_prompt_tokens_mean": mean(1),
                "posts_text_only": len(self.with_image),
                "context_setups": self.setups, "context_setup_s": round(self.setup_s, 3),
                "llama_cpp_python": getattr(self.L, "__version__", None)}

    # ------------------------------------------------------------ llama.cpp calls

    def _context(self, rows: int, row_len: int) -> None:
        """A cleared KV cache for `rows` sequences of `row_len` tokens (grown, never shrunk)."""
        L = self.L
        if self.ctx is not None and rows <= self.rows and row_len <= self.row_len:
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
            return
        self._free()
        self.rows = max(rows, self.rows)
        self.row_len = -(-max(row_len, self.row_len) // ROW_ALIGN) * ROW_ALIGN
        p = L.llama_context_default_params()
        p.n_seq_max = self.rows
        p.n_ctx = p.n_batch = self.rows * self.row_len      # the prefill is one llama_decode
        p.n_threads = p.n_threads_batch = self.threads
        p.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise InputError(f"{self.path}: llama.cpp cannot make a context of {self.rows} × "
                             f"{self.row_len} tokens")
        self.batch = L.llama_batch_init(p.n_ctx, 0, 1)
        self.setups += 1

    def _decode(self, entries: list[tuple[int, int, int]], outputs: list[int]) -> list[int]:
        """One llama_decode over `entries` (token, position, sequence id); the greedy next token
        after each entry index in `outputs`."""
        L, b = self.L, self.batch
        want = set(outputs)
        for i, (token, pos, seq) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, i in want
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} on {len(entries)} tokens")
        return [int(np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.vocab.size,))
                    .argmax()) for i in outputs]                                       # (V,) each

    # ------------------------------------------------------------ the variant

    def run_batch(self, posts: Sequence[Post], think: str, max_new_tokens: int,
                  force: bool = False) -> BatchRun:
        t0 = clock()
        texts = [text_prompt(self.encoder, self.manifest.model.max_context, p, think, max_new_tokens)
                 for p in posts]
        prompts = [self.vocab.encode(t, self.manifest.tokenizer.add_special_tokens) for t in texts]
        prep = clock() - t0
        setup = clock()
        self._context(len(posts), max(len(p) for p in prompts) + max_new_tokens)
        self.setup_s += clock() - setup
        t0 += clock() - setup                         # set-up is load work, not the batch's
        entries = [(tok, j, b) for b, ids in enumerate(prompts) for j, tok in enumerate(ids)]
        last = np.cumsum([len(p) for p in prompts]) - 1                               # (B,)
        rows = [_Row(self.vocab) for _ in posts]

        def done(b: int) -> bool:
            return len(rows[b].tokens) >= max_new_tokens or (not force and rows[b].stop is not None)

        live = list(range(len(posts)))
        nxt = self._decode(entries, last.tolist())                  # the prefill: B sequences
        ttft = clock() - t0
        finish, steps = [0.0] * len(posts), 0
        while True:
            now = clock() - t0
            for b, token in zip(live, nxt):
                rows[b].add(token)
                if done(b):
                    finish[b] = now
            live = [b for b in live if not done(b)]             # finished rows leave the batch
            if not live:
                break
            nxt = self._decode([(rows[b].tokens[-1], len(prompts[b]) + len(rows[b].tokens) - 1, b)
                                for b in live], list(range(len(live))))   # one token per live row
            steps += 1
        end = clock() - t0
        self._record(posts, texts, prompts)
        return BatchRun(prep_s=prep, ttft_s=ttft, end_s=end, decode_steps=steps, finish_s=finish,
                        outputs=[self.output(r, think) for r in rows])

    def output(self, row: _Row, think: str) -> PostOutput:
        parsed = parse(prompt.prime(think) + self.vocab.decode(row.answer))
        return PostOutput(tokens=list(row.tokens), keyphrases=parsed.keyphrases, thought=parsed.thought)

    def _record(self, posts: Sequence[Post], texts: list[str], prompts: list[list[int]]) -> None:
        """Prompt lengths (llama.cpp's and the bundle tokenizer's, same text) and image posts."""
        for post, text, ids in zip(posts, texts, prompts):
            key = post.id or text
            if key not in self.prompt_tokens:
                bundle = self.encoder.tokenizer.encode(
                    text, add_special_tokens=self.manifest.tokenizer.add_special_tokens)
                self.prompt_tokens[key] = (len(ids), len(bundle.ids))
            if post.image is not None:
                self.with_image.add(key)


def _default_threads() -> int:
    """Physical cores, as onnxruntime's default (llama.cpp's own default is a fixed 4)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
