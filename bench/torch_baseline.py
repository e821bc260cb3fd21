"""The torch baseline: the student checkpoint through transformers `generate`, timed like a bundle.

Same posts, same prompts (train.collate.prompt_batch renders them through the one prompt contract),
greedy, the same token budget and the same decoding rules as the runtime (`mmkp_edge.decoding`:
stop at an end token or `</answer>`; think mode `off` masks `<think>`/`</think>`). A logits processor that only records a
timestamp at every step gives time to first token and per-step cost from inside `generate`, so
both sides are timed the same way. Eager attention, float32: what a user gets from
`from_pretrained` on a CPU. Needs the `train` extra (torch, transformers).

Forced (`force=True`), `generate` gets no end token at all, so every row runs its whole budget and
picks the same greedy tokens as a forced bundle (banning the stop ids instead, as `min_new_tokens`
does, would change the tokens after the first stop).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.parser import parse
from mmkp_edge.posts import Post

from .timing import BatchRun, PostOutput, clock

INSTALL = "pip install 'mmkp-edge[train]'"


def _require_torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise InputError(f"--torch needs the train extra (torch, transformers): {INSTALL}") from None
    return torch


def check_torch_source(source: str) -> None:
    """Refuse, cheaply, a missing train extra or a source that is no checkpoint / run dir / hub id."""
    try:
        from train.student import resolve_source
    except ImportError:
        raise InputError(f"--torch needs the train extra (torch, transformers): {INSTALL}") from None
    _require_torch()
    resolve_source(source)


class _StepClock:
    """A LogitsProcessor that stamps each generation step and masks the suppressed ids."""

    def __init__(self, suppress: Sequence[int]):
        self.stamps: list[float] = []
        self.suppress = list(suppress)

    def __call__(self, input_ids, scores):
        self.stamps.append(clock())
        if self.suppress:
            scores[:, self.suppress] = float("-inf")
        return scores


class TorchVariant:
    def __init__(self, source: str, name: str = "torch eager", threads: int | None = None):
        torch = _require_torch()
        from train.student import load_student
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()              # our progress display is the only one
        self.torch = torch
        self.name = name
        self.source = source
        if threads:
            torch.set_num_threads(threads)
        start = clock()
        student = load_student(source, attn_implementation="eager")
        self.load_s = clock() - start
        self.model, self.processor = student.model.eval(), student.processor
        self.tokenizer = self.processor.tokenizer

    def describe(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters())
        return {"kind": "torch", "path": self.source, "dtype": "float32", "quantization": None,
                "attention": "eager", "parameters": params, "load_s": round(self.load_s, 3),
                "torch_threads": self.torch.get_num_threads()}

    def run_batch(self, posts: Sequence[Post], think: str, max_new_tokens: int,
                  force: bool = False) -> BatchRun:
        from train.collate import prompt_batch
        from train.student import prompt_budget
        from train.tokens import decoding_rules
        from transformers import LogitsProcessorList

        t0 = clock()   # long posts cut as the runtime cuts them (mmkp_edge.truncation)
        batch = prompt_batch(self.processor, posts, think,
                             max_prompt_tokens=prompt_budget(self.model, max_new_tokens))
        prep = clock() - t0
        rules = decoding_rules(self.model, self.tokenizer, think)
        steps = _StepClock(rules.suppress_ids)
        with self.torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      num_beams=1,
                                      eos_token_id=None if force else list(rules.stop_ids),
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      logits_processor=LogitsProcessorList([steps]))  # (B, T+new)
        end = clock() - t0
        new = out[:, batch["input_ids"].shape[1]:].tolist()                           # (B, new)
        stamps = [s - t0 for s in steps.stamps]
        outputs, finish = [], []
        for row in new:
            tokens = row[:max_new_tokens] if force else rules.cut(row)
            finish.append(stamps[min(len(tokens), len(stamps)) - 1])
            outputs.append(self.output(tokens, rules.cut(tokens), think))
        return BatchRun(prep_s=prep, ttft_s=stamps[0], end_s=end, decode_steps=len(stamps) - 1,
                        finish_s=finish, outputs=outputs)

    def output(self, tokens: list[int], answer: list[int], think: str) -> PostOutput:
        """`answer`: the tokens up to the first stop, which the keyphrases are parsed from."""
        text = prompt.prime(think) + self.tokenizer.decode(answer, skip_special_tokens=True)
        parsed = parse(text)
        return PostOutput(tokens=list(tokens), keyphrases=parsed.keyphrases, thought=parsed.thought)
