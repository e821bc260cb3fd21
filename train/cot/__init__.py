"""Fine-tune-CoT data: a teacher (an OpenAI-compatible server or a local VLM) writes a rationale for
each training post, an answer filter keeps the ones that reach the gold keyphrases, and the result
is an append-only, resumable JSONL keyed by post id that the `cot` and `dynamic_cot` stages read
with `load_rationales`."""

from .records import load_rationales

__all__ = ["load_rationales"]
