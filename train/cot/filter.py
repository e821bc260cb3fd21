"""The answer filter: keep a rationale only when the teacher's answer matches the gold keyphrases.

A rationale that argues for the wrong keyphrases teaches the student to reason its way to wrong
answers, so Fine-tune-CoT keeps only rationales whose answer is right. "Same keyphrase" is the
scorer's definition (mmkp_edge.phrases.stem_key); the gold is rendered and parsed exactly like the
teacher's answer, so `#StormHour` and `storm hour` compare equal on both sides.

Policies (`--keep`): `exact` — the answer's set equals the gold set (order free); `top1` — the
answer contains the first (most important) gold keyphrase; `any` — at least one gold keyphrase.
Every verdict carries a reason code (counted in the run summary) and a human-readable detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmkp_edge.parser import parse
from mmkp_edge.phrases import stem_key
from mmkp_edge.prompt import answer_span

KEEP_POLICIES = ("exact", "top1", "any")

# Reason codes. Kept: the policy name that accepted it. Rejected: one of these.
NO_GOLD = "no-gold"              # the post has no gold keyphrases (it is not sent)
NO_ANSWER = "no-answer"          # the reply has no answer span
NO_RATIONALE = "no-rationale"    # an answer but no reasoning before it
MISMATCH = "mismatch"            # exact: sets differ
TOP1_MISSING = "top1-missing"    # top1: the first gold keyphrase is not in the answer
NO_OVERLAP = "no-overlap"        # any: no gold keyphrase in the answer
FAILED = "failed"                # the request failed (the record's `error` says why)


@dataclass(frozen=True)
class Verdict:
    kept: bool
    reason: str          # a reason code (see above) or, when kept, the policy that accepted it
    detail: str = ""     # what differed, for people reading the records


def gold_phrases(keyphrases: Sequence[str]) -> list[str]:
    """Gold keyphrases as the student's target renders them (`answer_span`: separators inside a
    phrase become spaces), read back by the parser — exactly what a perfect teacher would echo."""
    return parse(answer_span(keyphrases)).keyphrases


def judge(answer: Sequence[str], gold: Sequence[str], *, rationale: str, has_answer: bool,
          keep: str = "exact") -> Verdict:
    """Decide whether a teacher reply is kept; `answer` is already parsed, `gold` is raw."""
    if keep not in KEEP_POLICIES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_POLICIES)}; got {keep!r}")
    gold_norm = gold_phrases(gold)
    if not gold_norm:
        return Verdict(False, NO_GOLD, "the post has no gold keyphrases")
    if not has_answer or not answer:
        return Verdict(False, NO_ANSWER, "the reply has no <answer> span")
    if not rationale.strip():
        return Verdict(False, NO_RATIONALE, "the reply has an answer but no reasoning")
    gold_keys = {stem_key(g): g for g in gold_norm}
    answer_keys = {stem_key(a): a for a in answer}
    missing = [g for k, g in gold_keys.items() if k not in answer_keys]
    extra = [a for k, a in answer_keys.items() if k not in gold_keys]
    detail = "; ".join(part for part in (
        f"missing: {', '.join(missing)}" if missing else "",
        f"extra: {', '.join(extra)}" if extra else "") if part)
    if keep == "exact":
        ok, why = not missing and not extra, MISMATCH
    elif keep == "top1":
        ok, why = stem_key(gold_norm[0]) in answer_keys, TOP1_MISSING
    else:
        ok, why = len(missing) < len(gold_keys), NO_OVERLAP
    return Verdict(True, keep, detail) if ok else Verdict(False, why, detail)
