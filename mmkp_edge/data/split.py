"""Low-overlap re-splitting: train/valid/test where a chosen share of test keyphrases is unseen.

A random split of social posts puts nearly every test label in train (98.9% on CMKP), so scores
reward label memorisation. Here whole keyphrase groups are held out: a held-out keyphrase has no
post in train, so every post carrying it goes to valid or test. Groups are visited in a seeded
random order and one is held out (for the eval split it suits best) when that moves the projected
unseen share of the eval splits towards the target; a group too large for the split's room is
skipped, so frequent keyphrases stay in train. The remaining eval places are filled with "safe"
posts, whose every keyphrase keeps at least one post in train, so only held-out groups are unseen.
The achieved ratios are then measured exactly from the final split (overlap.keyphrase_overlap).

Posts with several keyphrases: one held-out keyphrase pulls the whole post out of train; its other
keyphrases stay seen as long as one of their posts remains in train, and become unseen (counted as
such) when they lose their last one. Posts are never in two splits. Cost is linear in keyphrase
instances: 300k posts take seconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import InputError
from ..posts import Post
from .neardup import normalise_text
from .overlap import keyphrase_overlap, post_keys
from .progress import Progress

SPLITS = ("train", "valid", "test")
_VALID, _TEST, _UNUSED, _FREE = 1, 2, 3, -1


def parse_size(text: str, name: str) -> float:
    """'0.1' → a fraction, '5000' → a count (returned as float, whole number)."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--{name}: expected a fraction in (0, 1) or a post count, got {text!r}") from None
    if value < 0 or (value >= 1 and value != int(value)):
        raise InputError(f"--{name}: expected a fraction in (0, 1) or a whole post count, got {text!r}")
    return value


@dataclass(frozen=True)
class SplitConfig:
    unseen_ratio: float = 0.3   # target share of test keyphrase instances unseen in train
    valid: float = 0.1          # valid size: fraction of the pool (< 1) or a post count (>= 1)
    test: float = 0.1           # test size, same convention
    train: float | None = None  # train size; None = every post not in valid/test
    tolerance: float = 0.02     # |achieved - requested| test unseen ratio allowed, else an error
    seed: int = 0               # shuffles the keyphrase groups and posts

    def validate(self) -> "SplitConfig":
        if not 0.0 <= self.unseen_ratio <= 1.0:
            raise InputError(f"--unseen-ratio must be in [0, 1], got {self.unseen_ratio}")
        if not 0.0 < self.tolerance < 1.0:
            raise InputError(f"--tolerance must be in (0, 1), got {self.tolerance}")
        for name in ("valid", "test", "train"):
            value = getattr(self, name)
            if value is not None and (value < 0 or (value >= 1 and value != int(value))):
                raise InputError(f"--{name}: expected a fraction in (0, 1) or a whole count, got {value}")
        return self

    def sizes(self, n: int) -> dict[str, int]:
        """Post counts per split (and unused) for a pool of n posts."""
        def count(v: float) -> int:
            return int(v) if v >= 1 else int(round(v * n))
        valid, test = count(self.valid), count(self.test)
        train = n - valid - test if self.train is None else count(self.train)
        if test < 1:
            raise InputError(f"test split would be empty ({self.test} of {n} posts)")
        if train < 1 or valid + test + train > n:
            raise InputError(f"sizes train={train} valid={valid} test={test} do not fit a pool of "
                             f"{n} posts")
        return {"train": train, "valid": valid, "test": test, "unused": n - train - valid - test}


class _State:
    """Who is where, and the running unseen/instance counts of the two eval splits."""

    def __init__(self, keys: list[list[int]], n_kp: int, sizes: dict[str, int]):
        self.keys = keys
        self.where = [_FREE] * len(keys)
        self.free = [0] * n_kp                 # unassigned posts per keyphrase
        for ks in keys:
            for k in ks:
                self.free[k] += 1
        self.unseen = bytearray(n_kp)           # held out, or lost its last train candidate
        self.in_eval = {_VALID: [0] * n_kp, _TEST: [0] * n_kp}   # instances per eval split
        self.cap = {_VALID: sizes["valid"], _TEST: sizes["test"]}
        self.n = {_VALID: 0, _TEST: 0}
        self.inst = {_VALID: 0, _TEST: 0}
        self.u = {_VALID: 0, _TEST: 0}
        self.filler_inst = 0.0                  # mean instances of a post that can fill a place
        self.measure_fillers()

    def measure_fillers(self) -> None:
        """Mean keyphrase count of the free posts that are safe fillers (see _fill)."""
        sizes = [len(ks) for p, ks in enumerate(self.keys)
                 if self.where[p] == _FREE and all(self.free[k] >= 2 for k in ks)]
        self.filler_inst = sum(sizes) / len(sizes) if sizes else 0.0

    def projected(self, s: int, du: int = 0, di: int = 0, dn: int = 0) -> float | None:
        """Unseen share of split s once its free places hold average safe (seen) posts."""
        den = self.inst[s] + di + (self.cap[s] - self.n[s] - dn) * self.filler_inst
        return (self.u[s] + du) / den if den > 0 else None

    def effect(self, g: int, s: int, posts: list[int]) -> dict[int, int]:
        """Unseen instances gained per eval split if group g is held out into split s."""
        du = {_VALID: self.in_eval[_VALID][g], _TEST: self.in_eval[_TEST][g]}
        counts: dict[int, int] = {}
        for p in posts:
            for k in self.keys[p]:
                counts[k] = counts.get(k, 0) + 1
        for k, c in counts.items():
            if k == g:
                du[s] += c
            elif not self.unseen[k] and self.free[k] == c:     # k loses its last train candidate
                du[_VALID] += self.in_eval[_VALID][k]
                du[_TEST] += self.in_eval[_TEST][k]
                du[s] += c
        return du

    def assign(self, p: int, s: int) -> None:
        self.where[p] = s
        for k in self.keys[p]:
            self.free[k] -= 1
        if s in self.n:
            self.n[s] += 1
            self.inst[s] += len(self.keys[p])
            for k in self.keys[p]:
                self.in_eval[s][k] += 1

    def hold_out(self, g: int, s: int, posts: list[int], du: dict[int, int]) -> None:
        for p in posts:
            self.assign(p, s)
        for k in {k for p in posts for k in self.keys[p]} | {g}:
            if k == g or self.free[k] == 0:
                self.unseen[k] = 1
        for split, gained in du.items():
            self.u[split] += gained


def _choose_groups(state: _State, kp_posts: list[list[int]], order: list[int], target: float,
                   slack: float, progress: bool) -> int:
    """Greedy passes over keyphrase groups, test first, then valid; returns how many were held out.

    For each split the first pass takes only groups whose own posts are at least `target` unseen
    (so mixed posts, a held-out keyphrase beside a frequent one, do not use up the places); the
    second takes any group that still helps. Test goes first because its ratio is the promise; a
    valid-phase group must not change the test split's counts.
    """
    return sum(_greedy_pass(state, kp_posts, order, target, slack, s, purity, progress)
               for s in (_TEST, _VALID) if state.cap[s] > 0 for purity in (target, 0.0))


def _greedy_pass(state: _State, kp_posts: list[list[int]], order: list[int], target: float,
                 slack: float, s: int, purity: float, progress: bool) -> int:
    """One pass holding groups out into split s while that brings its projected ratio closer
    without passing `target + slack` (a big group early on must not overshoot for good)."""
    other = _VALID if s == _TEST else _TEST
    state.measure_fillers()
    held = 0
    label = f"holding out keyphrase groups for {'test' if s == _TEST else 'valid'}" + \
        (" (pure)" if purity else "")
    with Progress(label, len(order), enabled=progress) as bar:
        for g in order:
            bar.update()
            current = state.projected(s)
            if current is None or abs(current - target) < 1e-9:
                break
            if state.unseen[g]:
                continue
            posts = [p for p in kp_posts[g] if state.where[p] == _FREE]
            if state.n[s] + len(posts) > state.cap[s]:
                continue
            du = state.effect(g, s, posts)
            di = sum(len(state.keys[p]) for p in posts)
            if du[s] < purity * di or (s == _VALID and du[other]):
                continue
            proj = state.projected(s, du[s], di, len(posts))
            if proj is not None and proj <= target + slack and \
                    abs(proj - target) < abs(current - target) - 1e-12:
                state.hold_out(g, s, posts, du)
                held += 1
    return held


def _fill(state: _State, order: list[int], s: int, want: int) -> None:
    """Give split s `want` more posts: safe ones first (all keyphrases keep a train post), then any."""
    for safe_only in (True, False):
        for p in order:
            if want == 0:
                return
            if state.where[p] != _FREE:
                continue
            if safe_only and any(state.free[k] < 2 for k in state.keys[p]):
                continue
            state.assign(p, s)
            want -= 1


def split_pool(posts: Sequence[Post], cfg: SplitConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Split `posts` → ({"train"|"valid"|"test": [Post]}, report). Raises InputError if unreachable."""
    cfg.validate()
    if not posts:
        raise InputError("the pool has no posts")
    ids = set()
    for p in posts:
        if p.id in ids:
            raise InputError(f"duplicate post id {p.id!r} in the pool; ids must be unique")
        ids.add(p.id)
    sizes = cfg.sizes(len(posts))
    kp_index: dict[str, int] = {}
    keys = [[kp_index.setdefault(k, len(kp_index)) for k in post_keys(p)] for p in posts]
    if not kp_index:
        raise InputError("no post in the pool has keyphrases")
    kp_posts: list[list[int]] = [[] for _ in kp_index]
    for p, ks in enumerate(keys):
        for k in ks:
            kp_posts[k].append(p)
    rng = random.Random(cfg.seed)
    group_order = list(range(len(kp_index)))
    rng.shuffle(group_order)
    post_order = list(range(len(posts)))
    rng.shuffle(post_order)

    state = _State(keys, len(kp_index), sizes)
    slack = min(cfg.tolerance / 4, 0.005)
    held = _choose_groups(state, kp_posts, group_order, cfg.unseen_ratio, slack, progress) \
        if cfg.unseen_ratio > 0 else 0
    _fill(state, post_order, _TEST, sizes["test"] - state.n[_TEST])
    _fill(state, post_order, _VALID, sizes["valid"] - state.n[_VALID])
    _fill(state, post_order, _UNUSED, sizes["unused"])
    splits = {"train": [], "valid": [], "test": []}
    names = {_FREE: "train", _VALID: "valid", _TEST: "test"}
    for p, where in enumerate(state.where):
        if where != _UNUSED:
            splits[names[where]].append(posts[p])
    report = {"pool_posts": len(posts), "pool_distinct_keyphrases": len(kp_index),
              "requested": {**asdict(cfg), "sizes": sizes},
              "sizes": {name: len(items) for name, items in splits.items()} | {"unused": sizes["unused"]},
              "held_out_keyphrases": held, **_measure(splits, cfg)}
    if not report["within_tolerance"]:
        achieved = report["achieved"]["test_unseen_instance_ratio"]
        raise InputError(f"unseen ratio {cfg.unseen_ratio} not reachable within ±{cfg.tolerance} on "
                         f"this pool: best achieved {achieved:.4f} (try another --seed, a larger "
                         f"--test, or a wider --tolerance)")
    return splits, report


def _measure(splits: dict[str, list[Post]], cfg: SplitConfig) -> dict:
    """Achieved ratios on the final split, plus post-text leakage the split does not remove."""
    test_kp = keyphrase_overlap(splits["train"], splits["test"], top=0)
    valid_kp = keyphrase_overlap(splits["train"], splits["valid"], top=0) if splits["valid"] else None
    achieved = 1.0 - test_kp["seen_instance_ratio"]
    train_texts = {t for t in (normalise_text(p.text) for p in splits["train"]) if t}
    return {
        "achieved": {
            "test_unseen_instance_ratio": achieved,
            "test_unseen_distinct_ratio": 1.0 - test_kp["seen_distinct_ratio"],
            "test_posts_all_seen_ratio": test_kp["posts_all_seen_ratio"],
            "valid_unseen_instance_ratio":
                None if valid_kp is None else 1.0 - valid_kp["seen_instance_ratio"],
        },
        "within_tolerance": abs(achieved - cfg.unseen_ratio) <= cfg.tolerance,
        "valid_within_tolerance": valid_kp is None
            or abs(1.0 - valid_kp["seen_instance_ratio"] - cfg.unseen_ratio) <= cfg.tolerance,
        "test_posts_with_exact_duplicate_in_train":
            sum(normalise_text(p.text) in train_texts for p in splits["test"]),
        "method": "whole keyphrase groups (stem keys, mmkp_edge.phrases.stem_key) held out of train "
                  "greedily in seeded random order; remaining eval places filled with posts whose "
                  "keyphrases all keep a train post; ratios measured on the final split. Duplicate "
                  "texts are not moved together: run `mmkp-data dedup` on the pool first",
    }
