"""De-duplication within and across sets of posts, deterministic and accountable.

A calibrated benchmark needs each post once: a retweet in both train and test inflates scores, and
a bot template repeated 200 times inside train skews what the model learns. The sets are given in
priority order; posts are visited in that order (set by set, line by line) and a post is dropped when
an already *kept* post is its exact duplicate (equal normalised text) or near duplicate (character
n-gram Jaccard >= threshold, see neardup.py). So the first copy survives, and putting the test set
first protects it, removing its duplicates from train instead. Every removed post is listed with the
kept post that caused it and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..posts import Post
from .neardup import NearDupConfig, near_duplicate_pairs, normalise_text


@dataclass(frozen=True)
class Removal:
    set_name: str          # which input set the removed post came from
    id: str                # the removed post's id
    reason: str            # "exact" or "near"
    kept_set: str          # the set of the post that was kept instead
    kept_id: str           # that post's id
    jaccard: float         # n-gram Jaccard with the kept post (1.0 for exact duplicates)

    def to_json(self) -> dict:
        return {"set": self.set_name, "id": self.id, "reason": self.reason,
                "kept_set": self.kept_set, "kept_id": self.kept_id,
                "jaccard": round(self.jaccard, 4)}


@dataclass(frozen=True)
class DedupResult:
    kept: dict[str, list[Post]]       # set name → surviving posts, original order
    removed: list[Removal]            # in visiting order

    def summary(self, sizes: dict[str, int]) -> dict:
        per_set = {}
        for name, n in sizes.items():
            gone = [r for r in self.removed if r.set_name == name]
            per_set[name] = {"posts": n, "kept": len(self.kept[name]),
                             "removed_exact": sum(r.reason == "exact" for r in gone),
                             "removed_near": sum(r.reason == "near" for r in gone),
                             "removed_as_duplicate_of_other_set":
                                 sum(r.kept_set != name for r in gone)}
        return {"sets": per_set, "removed_total": len(self.removed)}


def deduplicate(sets: Sequence[tuple[str, Sequence[Post]]], cfg: NearDupConfig, *,
                near: bool = True, progress: bool = True) -> DedupResult:
    """Drop exact and (optionally) near-duplicate posts across `sets`, given in priority order."""
    names = [name for name, _ in sets]
    if len(set(names)) != len(names):
        raise InputError(f"set names must be unique, got {names}")
    owner: list[int] = []
    posts: list[Post] = []
    for s, (_, items) in enumerate(sets):
        owner.extend([s] * len(items))
        posts.extend(items)
    norm = [normalise_text(p.text) for p in posts]
    removed_by: dict[int, tuple[str, int, float]] = {}
    first: dict[str, int] = {}
    for i, t in enumerate(norm):
        if not t:
            continue
        if t in first:
            removed_by[i] = ("exact", first[t], 1.0)
        else:
            first[t] = i
    if near:
        reps = sorted(first.values())                         # one post per distinct text
        texts = [norm[i] for i in reps]
        eligible = np.array([len(t) >= cfg.min_chars for t in texts], dtype=bool)
        pairs = near_duplicate_pairs(texts, eligible, cfg, progress=progress)
        pairs.sort(key=lambda p: (p[1], p[0]))
        for a, b, jac in pairs:                               # a < b: b visited after a
            i, j = reps[a], reps[b]
            if j not in removed_by and i not in removed_by:
                removed_by[j] = ("near", i, jac)
    kept = {name: [] for name in names}
    removed = []
    for i, p in enumerate(posts):
        if i in removed_by:
            reason, k, jac = removed_by[i]
            if k in removed_by:          # exact copy of a text that was itself a near duplicate:
                reason, k, jac = removed_by[k]      # same text, so same Jaccard to the kept post
            removed.append(Removal(names[owner[i]], p.id, reason, names[owner[k]], posts[k].id, jac))
        else:
            kept[names[owner[i]]].append(p)
    for name, items in sets:
        if items and not kept[name]:
            raise InputError(f"every post of {name!r} is a duplicate of an earlier post; "
                             f"nothing would be left")
    return DedupResult(kept=kept, removed=removed)
