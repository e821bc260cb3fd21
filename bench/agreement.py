"""Agreement of every variant with the first one, on the same posts and settings.

The quantity a user cares about is the keyphrases: a post agrees when its parsed keyphrases,
stemmed (mmkp_edge.phrases.stem_key, the one definition of "same keyphrase"), are the same list.
Token-level figures are reported beside it because on random weights (the make-model shapes)
the parsed keyphrases are mostly empty or noise and only the token streams say anything: the share
of posts with identical tokens and the mean share of the reference's tokens matched before the
first difference.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmkp_edge.phrases import stem_key

from .timing import Measurement, PostOutput


def _prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(reference: Sequence[PostOutput], candidate: Sequence[PostOutput]) -> dict:
    """Keyphrase and token agreement of `candidate` with `reference` (same posts, same order)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("agreement needs the same non-empty list of posts on both sides")
    kp = sum([stem_key(k) for k in a.keyphrases] == [stem_key(k) for k in b.keyphrases]
             for a, b in zip(reference, candidate))
    same = sum(a.tokens == b.tokens for a, b in zip(reference, candidate))
    prefix = [_prefix(a.tokens, b.tokens) / max(1, len(a.tokens)) for a, b in zip(reference, candidate)]
    return {"posts": len(reference), "keyphrase_agreement": kp / len(reference),
            "token_sequence_agreement": same / len(reference),
            "token_prefix_agreement": sum(prefix) / len(prefix),
            "posts_with_keyphrases": sum(bool(a.keyphrases) for a in reference)}


def agreement_table(measurements: Sequence[Measurement]) -> list[dict]:
    """For each variant after the first, per think mode: agreement with the first variant, taken
    at the smallest batch size both ran (batching must not change greedy output)."""
    variants = list(dict.fromkeys(m.variant for m in measurements))
    if len(variants) < 2:
        return []
    ref_name = variants[0]
    by_key = {(m.variant, m.think, m.batch_size): m for m in measurements}
    rows = []
    for name in variants[1:]:
        for think in dict.fromkeys(m.think for m in measurements):
            sizes = sorted(s for (v, t, s) in by_key if v == name and t == think
                           and (ref_name, think, s) in by_key)
            if not sizes:
                continue
            ref, got = by_key[(ref_name, think, sizes[0])], by_key[(name, think, sizes[0])]
            rows.append({"variant": name, "reference": ref_name, "think": think,
                         "batch_size": sizes[0], **compare(ref.outputs, got.outputs)})
    return rows
