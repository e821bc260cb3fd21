"""The prompt and target contract: the only copy.

Training renders targets with it, the teacher is asked for its format, export records its hash in
the bundle manifest, and the runtime refuses a bundle whose hash it does not know. Change anything
here and `PROMPT_HASH` changes with it, so a model can never silently be served with a prompt it
was not trained on.

Targets:   direct    `<answer>kp1; kp2</answer>`
           reasoning `<think>rationale</think><answer>kp1; kp2</answer>`
Think modes prime the decoder: `off` → `<answer>` (no reasoning tokens are generated),
`on` → `<think>`, `auto` → nothing (the model chooses; the Dynamic-CoT behaviour).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

PROMPT_ID = "mmkp-v1"

INSTRUCTION = ("Predict the keyphrases (hashtags without '#') for this post, most important first, "
               "separated by ';'.")
POST_PREFIX = "Post: "
OCR_PREFIX = "Text in the image: "

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SPECIAL_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
KEYPHRASE_SEP = "; "

THINK_MODES = ("off", "on", "auto")
_PRIMES = {"off": ANSWER_OPEN, "on": THINK_OPEN, "auto": ""}


def user_text(text: str, ocr: str = "") -> str:
    """The user turn's text: the instruction, the post, and the image's OCR words when known."""
    out = f"{INSTRUCTION}\n{POST_PREFIX}{text.strip()}"
    if ocr and ocr.strip():
        out += f"\n{OCR_PREFIX}{ocr.strip()}"
    return out


def messages(text: str, ocr: str = "", has_image: bool = False) -> list[dict]:
    """The chat in Hugging Face message form; the image (if any) comes before the text."""
    content: list[dict] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": user_text(text, ocr)})
    return [{"role": "user", "content": content}]


def _clean(phrase: str) -> str:
    """A keyphrase as it may appear inside the answer span (no separators, no tags)."""
    for bad in (";", ",", "<", ">", "\n"):
        phrase = phrase.replace(bad, " ")
    return " ".join(phrase.split())


def answer_span(keyphrases: Sequence[str]) -> str:
    """`<answer>kp1; kp2</answer>`; separators inside a phrase become spaces."""
    kps = [c for c in (_clean(k) for k in keyphrases) if c]
    return f"{ANSWER_OPEN}{KEYPHRASE_SEP.join(kps)}{ANSWER_CLOSE}"


def direct_target(keyphrases: Sequence[str]) -> str:
    return answer_span(keyphrases)


def reasoning_target(rationale: str, keyphrases: Sequence[str]) -> str:
    rationale = " ".join(rationale.replace(THINK_CLOSE, " ").replace(THINK_OPEN, " ").split())
    return f"{THINK_OPEN}{rationale}{THINK_CLOSE}{answer_span(keyphrases)}"


def prime(think: str) -> str:
    """Text the assistant turn starts with for a think mode (decoder priming)."""
    try:
        return _PRIMES[think]
    except KeyError:
        raise ValueError(f"think mode must be one of {', '.join(THINK_MODES)}; got {think!r}") from None


def _contract() -> dict:
    """Everything that defines the prompt, as data (the hash is taken over this)."""
    return {"id": PROMPT_ID, "instruction": INSTRUCTION, "post_prefix": POST_PREFIX,
            "ocr_prefix": OCR_PREFIX, "tags": list(SPECIAL_TOKENS), "sep": KEYPHRASE_SEP,
            "primes": _PRIMES, "example": user_text("{text}", "{ocr}"),
            "targets": [direct_target(["{kp}"]), reasoning_target("{why}", ["{kp}"])]}


def contract_hash() -> str:
    """16 hex digits of sha256 over the contract as data."""
    return hashlib.sha256(json.dumps(_contract(), sort_keys=True).encode()).hexdigest()[:16]


PROMPT_HASH = contract_hash()
