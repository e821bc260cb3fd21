"""Exact and near-duplicate posts: what "the same post" means for overlap reports and de-duplication.

Benchmarks leak when a test post (a retweet, a bot template with one word changed) also sits in
training. Two posts are *exact* duplicates when their normalised texts are equal, and *near*
duplicates when the Jaccard similarity of their character n-gram sets reaches a stated threshold.
All-pairs Jaccard is quadratic, so candidates come from MinHash signatures with LSH banding (posts
agreeing on every row of one band share a bucket) and every candidate pair is then *verified* with
the exact Jaccard: the threshold is exact, only recall is probabilistic (for b bands of r rows a pair
of Jaccard J is a candidate with probability 1 - (1 - J^r)^b; 0.998 at J = 0.8 with the defaults).
Everything is numpy over flat arrays, so 300k posts take seconds, not hours.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .progress import Progress

_NON_WORD = re.compile(r"[\W_]+")
_FNV_PRIME = np.uint64(1099511628211)
_CHUNK_DOCS = 20_000       # posts shingled per vectorised pass
_SIG_DOCS = 100            # posts MinHashed per pass (keeps the (shingles, perms) block in cache)


@dataclass(frozen=True)
class NearDupConfig:
    ngram: int = 5             # character n-gram size, over the normalised text
    threshold: float = 0.8     # Jaccard of n-gram sets at or above which posts are near-duplicates
    num_perm: int = 120        # MinHash permutations; must equal bands * rows
    bands: int = 20            # LSH bands (rows per band = num_perm / bands)
    min_chars: int = 20        # shorter normalised texts are compared only for exact equality
    neighbours: int = 8        # in one LSH bucket, verify each post against this many preceding
                               # members and the bucket's first (bounds the cost of huge buckets)
    seed: int = 0              # seeds the MinHash permutations

    def validate(self) -> "NearDupConfig":
        if self.ngram < 1:
            raise InputError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.bands < 1 or self.num_perm % self.bands:
            raise InputError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        if self.min_chars < self.ngram:
            raise InputError(f"min_chars ({self.min_chars}) must be >= ngram ({self.ngram})")
        if self.neighbours < 1:
            raise InputError(f"neighbours must be >= 1, got {self.neighbours}")
        return self

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that a pair of this Jaccard shares at least one LSH bucket."""
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.bands

    def method(self) -> dict:
        """How duplicates are decided, for reports."""
        return {
            "normalisation": "NFKC, casefold, every run of non-alphanumeric characters (incl. '_') "
                             "-> one space, stripped; posts with empty normalised text are never "
                             "duplicates",
            "exact": "equal normalised text",
            "near": f"Jaccard of character {self.ngram}-gram sets of the normalised text >= "
                    f"{self.threshold} (verified exactly on every candidate pair); only texts of "
                    f">= {self.min_chars} normalised characters take part",
            "candidates": f"MinHash ({self.num_perm} permutations, seed {self.seed}) with LSH "
                          f"banding ({self.bands} bands x {self.rows} rows); in a bucket each post "
                          f"is checked against its {self.neighbours} predecessors and the bucket's "
                          f"first member",
            "recall_at_threshold": round(self.candidate_probability(self.threshold), 4),
            **{f"config_{k}": v for k, v in asdict(self).items()},
        }


def normalise_text(text: str) -> str:
    """The text two posts must share to be exact duplicates (see NearDupConfig.method)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", text).strip()


class Shingles:
    """Hashed character n-grams of many texts in one flat array (`bounds[i]:bounds[i+1]` is text i)."""

    def __init__(self, texts: Sequence[str], ngram: int, *, progress: bool = True):
        hashes, lengths = [], []
        with Progress("shingling", len(texts), enabled=progress) as bar:
            for start in range(0, len(texts), _CHUNK_DOCS):
                chunk = texts[start:start + _CHUNK_DOCS]
                h, n = _hash_ngrams(chunk, ngram)
                hashes.append(h)
                lengths.append(n)
                bar.update(len(chunk))
        self.hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint32)   # (M,)
        counts = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)        # (N,)
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)       # (N+1,)
        self._sets: dict[int, frozenset] = {}

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def set(self, i: int) -> frozenset:
        got = self._sets.get(i)
        if got is None:
            got = frozenset(self.hashes[self.bounds[i]:self.bounds[i + 1]].tolist())
            if len(self._sets) > 200_000:
                self._sets.clear()
            self._sets[i] = got
        return got

    def jaccard(self, i: int, j: int) -> float:
        a, b = self.set(i), self.set(j)
        if not a and not b:
            return 1.0
        inter = len(a & b)
        return inter / (len(a) + len(b) - inter)


def _hash_ngrams(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """All character n-gram hashes of `texts`, concatenated, and how many each text has.

    A text shorter than n contributes one n-gram (itself, padded with zeros); the empty text none.
    """
    codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in texts]
    lengths = np.array([len(c) for c in codes], dtype=np.int64)                    # (N,)
    padded = [np.concatenate([c, np.zeros(n - len(c), np.uint32)]) if 0 < len(c) < n else c
              for c in codes]
    plen = np.array([len(c) for c in padded], dtype=np.int64)                       # (N,)
    if plen.sum() == 0:
        return np.zeros(0, np.uint32), np.zeros(len(texts), np.int64)
    flat = np.concatenate(padded).astype(np.uint64)                                 # (L,)
    windows = len(flat) - n + 1
    h = np.zeros(max(windows, 0), dtype=np.uint64)
    for k in range(n):                                  # polynomial hash, wrapping mod 2**64
        h = h * _FNV_PRIME + flat[k:k + windows]
    starts = np.concatenate([[0], np.cumsum(plen)[:-1]])
    doc = np.repeat(np.arange(len(texts)), plen)[:windows]                          # (W,)
    keep = np.arange(windows) + n <= (starts + plen)[doc]   # window ends inside its own text
    h32 = ((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))).astype(np.uint32)
    counts = np.maximum(plen - n + 1, 0)
    counts[lengths == 0] = 0
    return h32[keep], counts


def signatures(shingles: Shingles, cfg: NearDupConfig, *, progress: bool = True) -> np.ndarray:
    """MinHash signatures (N, num_perm) uint32; a text without n-grams gets all-max (never matches)."""
    rng = np.random.default_rng(cfg.seed)
    mult = rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    add = rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint64).astype(np.uint32)
    n = len(shingles)
    sig = np.full((n, cfg.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)     # (N, K)
    bounds = shingles.bounds
    with Progress("minhash", n, enabled=progress) as bar:
        for s in range(0, n, _SIG_DOCS):
            e = min(n, s + _SIG_DOCS)
            lo, hi = bounds[s], bounds[e]
            nonempty = np.flatnonzero(bounds[s + 1:e + 1] > bounds[s:e]) + s
            if hi > lo:
                x = np.multiply.outer(shingles.hashes[lo:hi], mult)                  # (m, K)
                x += add
                x ^= x >> np.uint32(15)         # mix high bits down: each step is a bijection
                sig[nonempty] = np.minimum.reduceat(x, bounds[nonempty] - lo, axis=0)
            bar.update(e - s)
    return sig


def band_keys(sig: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """One uint64 bucket key per (post, band): (N, bands). Key collisions only add candidates."""
    rng = np.random.default_rng(cfg.seed + 1)
    weights = rng.integers(1, 2**63, cfg.rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((len(sig), cfg.bands), dtype=np.uint64)                     # (N, B)
    for b in range(cfg.bands):                     # one band at a time keeps memory at (N, R)
        rows = sig[:, b * cfg.rows:(b + 1) * cfg.rows].astype(np.uint64)          # (N, R)
        keys[:, b] = (rows * weights).sum(axis=1, dtype=np.uint64)
    return keys


def candidate_pairs(keys: np.ndarray, eligible: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """(P, 2) int64 index pairs i < j that share a bucket in some band, bounded per bucket."""
    ids_all = np.flatnonzero(eligible)
    found = []
    for b in range(cfg.bands):
        k = keys[ids_all, b]
        order = np.lexsort((ids_all, k))
        ks, ids = k[order], ids_all[order]                      # sorted by (key, post index)
        if len(ks) < 2:
            continue
        for d in range(1, cfg.neighbours + 1):
            same = ks[d:] == ks[:-d]
            if not same.any():
                break
            found.append(np.stack([ids[:-d][same], ids[d:][same]], axis=1))
        new_run = np.concatenate([[True], ks[1:] != ks[:-1]])
        first = np.maximum.accumulate(np.where(new_run, np.arange(len(ks)), 0))
        far = np.arange(len(ks)) - first > cfg.neighbours
        if far.any():
            found.append(np.stack([ids[first[far]], ids[far]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    n = int(keys.shape[0])
    code = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


def verified_pairs(shingles: Shingles, pairs: np.ndarray, threshold: float, *,
                   progress: bool = True) -> list[tuple[int, int, float]]:
    """Candidate pairs whose exact n-gram Jaccard reaches the threshold, with that Jaccard."""
    out = []
    with Progress("verifying candidates", len(pairs), enabled=progress) as bar:
        for start in range(0, len(pairs), 10_000):
            for i, j in pairs[start:start + 10_000].tolist():
                jac = shingles.jaccard(i, j)
                if jac >= threshold:
                    out.append((i, j, jac))
            bar.update(min(10_000, len(pairs) - start))
    return out


def near_duplicate_pairs(texts: Sequence[str], eligible: np.ndarray, cfg: NearDupConfig, *,
                         progress: bool = True) -> list[tuple[int, int, float]]:
    """Verified near-duplicate pairs (i < j, Jaccard) among the eligible normalised `texts`."""
    shingles = Shingles(texts, cfg.ngram, progress=progress)
    keys = band_keys(signatures(shingles, cfg, progress=progress), cfg)
    pairs = candidate_pairs(keys, eligible, cfg)
    return verified_pairs(shingles, pairs, cfg.threshold, progress=progress)
