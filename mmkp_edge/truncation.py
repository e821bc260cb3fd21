"""Long posts: cut the text so the prompt fits the model's context — the one rule, for everyone.

A post longer than the model's context is still a post to tag, not an input to refuse: we keep its
beginning. Training, evaluation (train.collate) and the runtime (mmkp_edge.predictor) all cut with
`fit`, each counting tokens with its own tokenizer (transformers' processor there, `tokenizers`
here; export's parity checks keep the two identical), so a long post is seen the same way in
training and in serving. The rule:

- The prompt *before the think prime* (chat template, image tokens, instruction, post text, OCR)
  may take `prompt_limit(max_context, max_new_tokens)` tokens: the model's context (the text
  config's `max_position_embeddings`, the manifest's `model.max_context`) minus the generation
  budget. Training uses the stage's `eval.max_new_tokens` as that budget, so training, its
  evaluation and a runtime with the same `max_new_tokens` (both default 96) cut at one place. The
  prime is left out of the count so that every think mode sees the same text.
- The post text matters more than the words read from its image: the OCR is cut first (its
  beginning kept, down to nothing), and only then the post text.
- The beginning is kept: the longest prefix that fits, shortened to the last whole word when the
  cut falls inside one (unless that word is the whole prefix).
- A post that was cut is flagged (`Fitted.truncated`; the runtime's `Prediction.truncated`).

Token counts need not grow with every character (BPE can merge a longer text into fewer tokens), so
the search keeps only cuts it has counted to fit: the result always fits whenever the bare prompt
(no text, no OCR) does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Counter = Callable[[str, str], int]    # (text, ocr) → prompt tokens before the think prime


@dataclass(frozen=True)
class Fitted:
    text: str            # the post text that was kept
    ocr: str             # the OCR words that were kept
    truncated: bool      # text or OCR was cut
    tokens: int          # prompt tokens of the kept post, as counted


def prompt_limit(max_context: int, max_new_tokens: int) -> int:
    """Most tokens the prompt (before the think prime) may take: context − generation budget."""
    return max_context - max_new_tokens


def _longest_prefix(source: str, fits: Callable[[str], bool]) -> str:
    """The longest prefix of `source` (trailing space stripped) that `fits`, by binary search over
    its length; "" when none does. Only cuts that were checked to fit are returned."""
    best, lo, hi = "", 0, len(source)          # invariant: the answer's length is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cut = source[:mid].rstrip()
        if fits(cut):
            best, lo = cut, mid
        else:
            hi = mid - 1
    if best and len(best) < len(source) and not source[len(best)].isspace():
        words = best.rsplit(None, 1)           # the cut fell inside a word: drop its start
        if len(words) == 2 and fits(words[0]):
            best = words[0]
    return best


def fit(text: str, ocr: str, count: Counter, limit: int) -> Fitted:
    """Keep the beginning of `text` and `ocr` so that `count(text, ocr) <= limit` (see the module
    docstring). When even the bare prompt exceeds `limit`, both come back empty and `tokens` says
    by how much it is over; the caller decides (the runtime then shrinks the generation budget,
    and refuses only a prompt that leaves no room at all)."""
    tokens = count(text, ocr)
    if tokens <= limit:
        return Fitted(text, ocr, False, tokens)
    if ocr and count(text, "") <= limit:
        kept_text, kept_ocr = text, _longest_prefix(ocr, lambda o: count(text, o) <= limit)
    else:
        kept_text, kept_ocr = _longest_prefix(text, lambda t: count(t, "") <= limit), ""
    return Fitted(kept_text, kept_ocr, (kept_text, kept_ocr) != (text, ocr),
                  count(kept_text, kept_ocr))
