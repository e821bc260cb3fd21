"""The teacher prompt: one versioned template, recorded in every rationale record.

Fine-tune-CoT needs rationales that end in the keyphrases in the student's own target format
(`<think>…</think><answer>kp1; kp2</answer>`, mmkp_edge.prompt), so the teacher is asked for exactly
that and its reply is read with the same parser the student's outputs go through. Two modes:

- `gold` (rationalisation, the default): the teacher sees the gold keyphrases and explains them —
  what the text says, what the image shows, why each keyphrase fits, especially the absent ones;
- `predict` (`--no-gold`): the teacher predicts without the gold; the filter keeps the right ones.

`TEMPLATE_VERSION` carries a hash of every string below, so editing the wording changes the version
written into new records and old and new rationales can never be mixed up silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mmkp_edge.parser import parse
from mmkp_edge.prompt import (ANSWER_CLOSE, ANSWER_OPEN, KEYPHRASE_SEP, THINK_CLOSE, THINK_OPEN,
                              answer_span)

TEMPLATE_ID = "cot-v1"
MODES = ("gold", "predict")

SYSTEM = ("You are an expert social-media analyst. You explain, briefly and concretely, which "
          "hashtags (keyphrases) a post should carry and why.")

_POST = "Post text: {text}"
_OCR = "Text visible in the image: {ocr}"
_IMAGE = {True: "The post's image is attached.", False: "The post has no image."}
_GOLD = "Its keyphrases, most important first: {keyphrases}"

_TASK = {
    "gold": ("Write a short rationale (2-5 sentences) for these keyphrases: what the text says, "
             "what the image shows, and why each keyphrase fits the post, especially any keyphrase "
             "that does not appear in the text. Reason as if you were working the keyphrases out "
             "yourself; do not say that they were given to you."),
    "predict": ("Work out the keyphrases (hashtags without '#') this post most likely carries. "
                "First reason briefly (2-5 sentences): what the text says, what the image shows, "
                "and which keyphrases follow, including ones that do not appear in the text."),
}
_FORMAT = {
    "gold": ("Reply in exactly this format and nothing else:\n"
             f"{THINK_OPEN}your rationale{THINK_CLOSE}"
             f"{ANSWER_OPEN}kp1{KEYPHRASE_SEP}kp2{ANSWER_CLOSE}\n"
             "The answer lists exactly the keyphrases above, in the same order, separated by "
             f"'{KEYPHRASE_SEP.strip()}'."),
    "predict": ("Reply in exactly this format and nothing else:\n"
                f"{THINK_OPEN}your reasoning{THINK_CLOSE}{ANSWER_OPEN}kp1{KEYPHRASE_SEP}kp2"
                f"{ANSWER_CLOSE}\nList the keyphrases most important first, separated by "
                f"'{KEYPHRASE_SEP.strip()}'."),
}


def _template_hash() -> str:
    data = {"system": SYSTEM, "post": _POST, "ocr": _OCR, "image": list(_IMAGE.values()),
            "gold": _GOLD, "task": _TASK, "format": _FORMAT}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


TEMPLATE_VERSION = f"{TEMPLATE_ID}-{_template_hash()}"


def user_prompt(text: str, keyphrases: tuple[str, ...] | list[str], *, mode: str, has_image: bool,
                ocr: str = "") -> str:
    """The user turn's text (the image, when there is one, is sent beside it by the teacher)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    lines = [_IMAGE[has_image], _POST.format(text=text.strip() or "(no text)")]
    if ocr.strip():
        lines.append(_OCR.format(ocr=ocr.strip()))
    if mode == "gold":
        # The gold span is rendered exactly as the student's target renders it.
        gold = answer_span(keyphrases)[len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
        lines.append(_GOLD.format(keyphrases=gold))
    lines += ["", _TASK[mode], "", _FORMAT[mode]]
    return "\n".join(lines)


@dataclass(frozen=True)
class TeacherAnswer:
    rationale: str           # the reasoning, whitespace-normalised ("" when the teacher gave none)
    keyphrases: list[str]    # the answer as the student's parser reads it
    has_answer: bool         # an <answer> span (or a post-</think> tail) was present


def read_reply(text: str) -> TeacherAnswer:
    """A teacher's reply → rationale + answer.

    The rationale is the `<think>` span; a teacher that skipped the tags but wrote prose before
    `<answer>` still counts (that prose is the rationale). Keyphrases come from
    `mmkp_edge.parser.parse`, so the filter judges exactly what the student would be trained on.
    """
    parsed = parse(text)
    rationale = parsed.rationale
    if rationale is None and ANSWER_OPEN in text:
        rationale = " ".join(text.split(ANSWER_OPEN, 1)[0].split())
    has_answer = ANSWER_OPEN in text or THINK_CLOSE in text
    return TeacherAnswer(rationale=rationale or "",
                         keyphrases=parsed.keyphrases if has_answer else [], has_answer=has_answer)
