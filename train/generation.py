"""Greedy batched generation with the torch student: zero-shot / per-stage evaluation, and the
reference the exported ONNX bundle and the torch-free runtime must reproduce token for token.

The contract mirrored by the runtime: left-padded prompts (`collate.prompt_batch`), greedy argmax
under `mmkp_edge.decoding`'s rules (stop at an end token or `</answer>`, reasoning tags masked when
think=off), decode the new ids with `skip_special_tokens=True` (the think/answer tags are ordinary
added tokens, so they survive), and prepend the think-mode prime so `text` is the whole assistant
output in target format (`<answer>kp1; kp2</answer>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmkp_edge.posts import Post

from .collate import prompt_batch
from .student import ImageStats, prompt_budget
from .tokens import decoding_rules


@dataclass(frozen=True)
class Generation:
    text: str                     # prime + decoded continuation (parse with mmkp_edge.parser)
    token_ids: tuple[int, ...]    # generated ids up to and including the stop id (as the runtime)
    finish: str = "length"        # "stop" (an end token or </answer>) | "length" (budget spent)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@torch.no_grad()
def generate_batch(model, processor, posts: Sequence[Post], think: str = "off",
                   max_new_tokens: int = 64, stats: ImageStats | None = None) -> list[Generation]:
    """Greedy-decode a batch of posts; one `Generation` per post, in order."""
    if not posts:
        return []
    tok = processor.tokenizer
    rules = decoding_rules(model, tok, think)
    device = next(model.parameters()).device
    limit = prompt_budget(model, max_new_tokens)           # long posts cut as the runtime cuts them
    batch = {k: v.to(device) for k, v in prompt_batch(processor, posts, think, stats, limit).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, eos_token_id=list(rules.stop_ids),
                             suppress_tokens=list(rules.suppress_ids) or None,
                             pad_token_id=tok.pad_token_id)               # (B, T + new)
    finally:
        model.train(was_training)
    new = out[:, batch["input_ids"].shape[1]:].tolist()                  # (B, new)
    results = []
    for row in new:
        ids = rules.cut(row)
        results.append(Generation(rules.prime + tok.decode(ids, skip_special_tokens=True), tuple(ids),
                                  rules.finish(ids)))
    return results
