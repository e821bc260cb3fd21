"""How much a test set overlaps its training set: the numbers that say whether a benchmark is calibrated.

The Dynamic-CoT paper's point: on CMKP nearly every test keyphrase instance is a training label, so
a model scores well by memorising the label vocabulary. This module measures that (keyphrase
overlap, stemmed exactly like the scorer) and post-level leakage (exact and near-duplicate texts),
and says in the report how each number was computed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..phrases import stem_key
from ..posts import Post
from .neardup import NearDupConfig, Shingles, band_keys, candidate_pairs, normalise_text, signatures
from .progress import Progress


def post_keys(post: Post) -> tuple[str, ...]:
    """A post's keyphrases as stem keys, de-duplicated in order (one instance per distinct key)."""
    seen: dict[str, None] = {}
    for phrase in post.keyphrases:
        key = stem_key(phrase)
        if key:
            seen.setdefault(key, None)
    return tuple(seen)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def keyphrase_overlap(train: Sequence[Post], test: Sequence[Post], *, top: int = 20) -> dict:
    """Seen/unseen statistics of the test keyphrases against the train label set."""
    train_counts: Counter[str] = Counter()
    for p in train:
        train_counts.update(post_keys(p))
    test_counts: Counter[str] = Counter()
    surface: dict[str, Counter[str]] = {}
    instances = seen_instances = labelled_posts = all_seen_posts = 0
    for p in test:
        keys = post_keys(p)
        if not keys:
            continue
        labelled_posts += 1
        seen = [k in train_counts for k in keys]
        instances += len(keys)
        seen_instances += sum(seen)
        all_seen_posts += all(seen)
        test_counts.update(keys)
        for phrase in p.keyphrases:
            surface.setdefault(stem_key(phrase), Counter())[phrase.strip().lower()] += 1
    seen_distinct = [k for k in test_counts if k in train_counts]
    ranked = sorted(seen_distinct, key=lambda k: (-test_counts[k], k))[:top]
    return {
        "seen_instance_ratio": _ratio(seen_instances, instances),
        "seen_distinct_ratio": _ratio(len(seen_distinct), len(test_counts)),
        "posts_all_seen_ratio": _ratio(all_seen_posts, labelled_posts),
        "test_keyphrase_instances": instances,
        "seen_keyphrase_instances": seen_instances,
        "test_distinct_keyphrases": len(test_counts),
        "seen_distinct_keyphrases": len(seen_distinct),
        "train_distinct_keyphrases": len(train_counts),
        "test_posts_with_keyphrases": labelled_posts,
        "test_posts_all_seen": all_seen_posts,
        "top_overlapping_keyphrases": [
            {"keyphrase": surface[k].most_common(1)[0][0], "stem": k,
             "test_count": test_counts[k], "train_count": train_counts[k]} for k in ranked],
    }


def duplicate_overlap(train: Sequence[Post], test: Sequence[Post], cfg: NearDupConfig, *,
                      examples: int = 10, progress: bool = True) -> dict:
    """Test posts whose text also occurs in train: exactly (normalised) or nearly (n-gram Jaccard).

    The two counts are disjoint: a post with an exact duplicate is not counted as a near one.
    """
    train_norm = [normalise_text(p.text) for p in train]
    test_norm = [normalise_text(p.text) for p in test]
    first_train: dict[str, int] = {}
    for i, t in enumerate(train_norm):
        if t:
            first_train.setdefault(t, i)
    exact = [j for j, t in enumerate(test_norm) if t and t in first_train]
    exact_same_kp = sum(set(post_keys(test[j])) == set(post_keys(train[first_train[test_norm[j]]]))
                        for j in exact)
    # Near duplicates: one representative per distinct train text, then the non-exact test posts.
    reps = sorted(first_train.values())
    exact_set = set(exact)
    queries = [j for j, t in enumerate(test_norm) if t and j not in exact_set]
    texts = [train_norm[i] for i in reps] + [test_norm[j] for j in queries]
    eligible = np.array([len(t) >= cfg.min_chars for t in texts], dtype=bool)
    shingles = Shingles(texts, cfg.ngram, progress=progress)
    keys = band_keys(signatures(shingles, cfg, progress=progress), cfg)
    pairs = candidate_pairs(keys, eligible, cfg)
    pairs = pairs[(pairs[:, 0] < len(reps)) & (pairs[:, 1] >= len(reps))]   # train x test only
    best: dict[int, tuple[float, int]] = {}
    with Progress("verifying candidates", len(pairs), enabled=progress) as bar:
        for a, b in pairs.tolist():
            bar.update()
            if b in best and best[b][0] >= 1.0:
                continue
            jac = shingles.jaccard(a, b)
            if jac >= cfg.threshold and (b not in best or jac > best[b][0]):
                best[b] = (jac, a)
    near = sorted(best)
    near_same_kp = sum(set(post_keys(test[queries[b - len(reps)]]))
                       == set(post_keys(train[reps[best[b][1]]])) for b in near)
    return {
        "exact_duplicate_posts": len(exact),
        "exact_duplicate_ratio": _ratio(len(exact), len(test)),
        "exact_duplicates_same_keyphrases": exact_same_kp,
        "near_duplicate_posts": len(near),
        "near_duplicate_ratio": _ratio(len(near), len(test)),
        "near_duplicates_same_keyphrases": near_same_kp,
        "near_duplicate_candidate_pairs": int(len(pairs)),
        "exact_duplicate_examples": [
            {"test_id": test[j].id, "train_id": train[first_train[test_norm[j]]].id,
             "text": test[j].text[:200]} for j in exact[:examples]],
        "near_duplicate_examples": [
            {"test_id": test[queries[b - len(reps)]].id, "train_id": train[reps[best[b][1]]].id,
             "jaccard": round(best[b][0], 4), "test_text": test[queries[b - len(reps)]].text[:200],
             "train_text": train[reps[best[b][1]]].text[:200]} for b in near[:examples]],
    }


def overlap_report(train: Sequence[Post], test: Sequence[Post], cfg: NearDupConfig, *,
                   top: int = 20, progress: bool = True) -> dict:
    """The full overlap report: keyphrase statistics, duplicates, and how they were computed."""
    kp = keyphrase_overlap(train, test, top=top)
    dup = duplicate_overlap(train, test, cfg, progress=progress)
    method = {
        "keyphrase_identity": "mmkp_edge.phrases.stem_key: split on single spaces, strip, "
                              "lowercase, NLTK Porter stem (the CMKP scorer's rule); a post's "
                              "keyphrases are de-duplicated by stem, one instance per distinct stem",
        "seen_instance_ratio": "test (post, keyphrase) instances whose stem is any train label / all "
                               "test instances",
        "seen_distinct_ratio": "distinct test stems that are train labels / distinct test stems",
        "posts_all_seen_ratio": "test posts whose every keyphrase is a train label / test posts "
                                "with at least one keyphrase",
        "exact_duplicate_posts": "test posts whose normalised text equals a train post's",
        "near_duplicate_posts": "test posts, not exact duplicates, with a train post at n-gram "
                                "Jaccard >= threshold; duplicate ratios are over all test posts",
        **cfg.method(),
    }
    return {"train_posts": len(train), "test_posts": len(test),
            **{k: v for k, v in kp.items() if k != "top_overlapping_keyphrases"},
            **{k: v for k, v in dup.items() if not k.endswith("_examples")},
            "top_overlapping_keyphrases": kp["top_overlapping_keyphrases"],
            "exact_duplicate_examples": dup["exact_duplicate_examples"],
            "near_duplicate_examples": dup["near_duplicate_examples"],
            "method": method}


def format_overlap(report: dict) -> str:
    """A short table for people (the JSON report holds everything)."""
    r = report
    lines = [
        f"train posts {r['train_posts']:,} · test posts {r['test_posts']:,}",
        f"seen keyphrase instances   {100 * r['seen_instance_ratio']:6.2f}%  "
        f"({r['seen_keyphrase_instances']:,}/{r['test_keyphrase_instances']:,})",
        f"seen distinct keyphrases   {100 * r['seen_distinct_ratio']:6.2f}%  "
        f"({r['seen_distinct_keyphrases']:,}/{r['test_distinct_keyphrases']:,})",
        f"posts with all kps seen    {100 * r['posts_all_seen_ratio']:6.2f}%  "
        f"({r['test_posts_all_seen']:,}/{r['test_posts_with_keyphrases']:,})",
        f"exact duplicate posts      {100 * r['exact_duplicate_ratio']:6.2f}%  "
        f"({r['exact_duplicate_posts']:,})",
        f"near duplicate posts       {100 * r['near_duplicate_ratio']:6.2f}%  "
        f"({r['near_duplicate_posts']:,}; Jaccard of char {r['method']['config_ngram']}-grams >= "
        f"{r['method']['config_threshold']})",
        "top overlapping keyphrases: " + ", ".join(
            f"{t['keyphrase']} ({t['test_count']}/{t['train_count']})"
            for t in r["top_overlapping_keyphrases"][:10]),
    ]
    return "\n".join(lines)
