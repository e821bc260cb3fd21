"""The scorer: CMKP's keyphrase evaluator, reproduced exactly, plus the views it lacks.

Every number in the paper tables comes from CMKP's `pred_evaluate_func.py`, so our `all`, `present`
and `absent` rows must equal it to 5 decimals on its own released predictions (tests check that).
Its conventions, kept here on purpose:

- phrases compare as tuples of Porter stems (`phrases.stem_tokens`, the one definition);
- predictions lose duplicates and invalid phrases (a `<unk>`, `,` or `.` token, or no tokens)
  *before* the top-k cut, so a model is not punished at k for repeating itself;
- P@k divides by min(k, n), so emitting fewer tags is never penalised;
- the reported F1@k is the F1 of the *mean* P and *mean* R (not the mean per-post F1);
- AP@k sums P@i over hit positions i <= min(k, n) and divides by the number of unique targets;
- a phrase is *present* when its stems occur contiguously in the stemmed source (split on
  whitespace, like CMKP); present/absent rows average over the posts with at least one such target,
  scoring only that post's present (absent) predictions against its present (absent) targets.

Beside it (never instead of it): `strict` (P@k = hits / k, immune to the "emit fewer tags" bias),
`seen`/`unseen` (a target is seen when its stemmed form is a training keyphrase; computed like
present/absent: posts with >= 1 seen target, seen predictions against seen targets, and likewise for
unseen) and `preds_per_post` (mean number of valid unique predictions; an empty list counts 0).

Torch-free: stdlib plus NLTK through `phrases`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .phrases import stem_key, stem_tokens, stem_word

Phrase = tuple[str, ...]

INVALID_TOKENS = frozenset({"<unk>", ",", "."})
MAP_K = 5
DEFAULT_KS = (1, 3, 5)
SUBSETS = ("all", "strict", "present", "absent", "seen", "unseen")


# ---------------------------------------------------------------- phrases of one post

def clean_predictions(predictions: Iterable[str]) -> list[Phrase]:
    """Stemmed predictions, invalid ones and later duplicates dropped, order kept."""
    kept: list[Phrase] = []
    seen: set[Phrase] = set()
    for phrase in predictions:
        stems = stem_tokens(phrase)
        if not stems or any(t in INVALID_TOKENS for t in stems) or stems in seen:
            continue
        seen.add(stems)
        kept.append(stems)
    return kept


def unique_targets(targets: Iterable[str]) -> list[Phrase]:
    """Stemmed targets with stemmed duplicates (and empty phrases) removed, order kept."""
    return list(dict.fromkeys(s for s in map(stem_tokens, targets) if s))


def cmkp_source(text: str, ocr: str = "") -> str:
    """The text presence is judged against: the post text, plus the OCR line when it has any."""
    return f"{text} {ocr}" if ocr.strip() else text


def source_stems(source: str) -> Phrase:
    """Stemmed source tokens; CMKP splits the source on any whitespace (phrases on single spaces)."""
    return tuple(stem_word(t) for t in source.split())


def is_present(phrase: Phrase, source: Phrase) -> bool:
    """Whether `phrase` occurs contiguously in `source` (both stemmed)."""
    n = len(phrase)
    if n == 0:
        return False
    return any(source[i:i + n] == phrase for i in range(len(source) - n + 1)
               if source[i] == phrase[0])


# ---------------------------------------------------------------- accumulating one subset

class _Subset:
    """Sums of per-post P@k, strict P@k, R@k and AP@5 over the posts scored in one subset."""

    def __init__(self, ks: Sequence[int]) -> None:
        self.ks = tuple(ks)
        self.n_posts = 0
        self.p = dict.fromkeys(self.ks, 0.0)
        self.p_strict = dict.fromkeys(self.ks, 0.0)
        self.r = dict.fromkeys(self.ks, 0.0)
        self.ap = 0.0

    def add(self, targets: list[Phrase], predictions: list[Phrase]) -> None:
        """Score one post; an empty prediction list is one non-matching prediction (n = 1)."""
        self.n_posts += 1
        gold = set(targets)
        n_targets = len(gold)
        n = len(predictions) or 1
        hits = [p in gold for p in predictions[:max(max(self.ks), MAP_K)]]
        for k in self.ks:
            found = sum(hits[:k])
            self.p[k] += found / min(k, n)
            self.p_strict[k] += found / k
            self.r[k] += found / n_targets if n_targets else 0.0
        if n_targets:
            running, total = 0, 0.0
            for i, hit in enumerate(hits[:MAP_K], start=1):
                if hit:
                    running += 1
                    total += running / i
            self.ap += total / n_targets

    def result(self, strict: bool = False) -> dict:
        """Mean-based F1@k, P@k, R@k, MAP@5 and the number of posts (all 0 for no posts)."""
        count = self.n_posts or 1
        precision = self.p_strict if strict else self.p
        out: dict = {}
        for k in self.ks:
            p, r = precision[k] / count, self.r[k] / count
            out[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
            out[f"p@{k}"] = p
            out[f"r@{k}"] = r
        out[f"map@{MAP_K}"] = self.ap / count
        out["n_posts"] = self.n_posts
        return out


def _split(phrases: list[Phrase], keep: Callable[[Phrase], bool]) -> tuple[list, list]:
    """Phrases with `keep` true, and the rest, each in order."""
    yes = [p for p in phrases if keep(p)]
    return yes, [p for p in phrases if not keep(p)]


def _add_split(yes: _Subset, no: _Subset, targets: list[Phrase], predictions: list[Phrase],
               keep: Callable[[Phrase], bool]) -> None:
    """Score a post in the `yes`/`no` subsets of a partition, where it has such targets."""
    t_yes, t_no = _split(targets, keep)
    p_yes, p_no = _split(predictions, keep)
    if t_yes:
        yes.add(t_yes, p_yes)
    if t_no:
        no.add(t_no, p_no)


# ---------------------------------------------------------------- public API

def score(targets: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]],
          sources: Sequence[str] | None = None, train_keyphrases: Iterable[str] | None = None,
          ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Score line-aligned gold and predicted keyphrases (phrases as plain strings).

    `sources` (one string per post, see `cmkp_source`) adds `present`/`absent`;
    `train_keyphrases` adds `seen`/`unseen`. Returns a JSON-ready dict: one object per subset with
    `f1@k`, `p@k`, `r@k` for k in `ks`, `map@5` and `n_posts` (fractions in [0, 1]), plus
    `preds_per_post`.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} target lists but {len(predictions)} prediction lists")
    if sources is not None and len(sources) != len(targets):
        raise ValueError(f"{len(targets)} target lists but {len(sources)} sources")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    train = None if train_keyphrases is None else {stem_key(p) for p in train_keyphrases}
    subsets = {name: _Subset(ks) for name in SUBSETS}
    n_predictions = 0
    for i, (gold, pred) in enumerate(zip(targets, predictions)):
        t, p = unique_targets(gold), clean_predictions(pred)
        n_predictions += len(p)
        subsets["all"].add(t, p)
        if sources is not None:
            src = source_stems(sources[i])
            _add_split(subsets["present"], subsets["absent"], t, p, lambda x: is_present(x, src))
        if train is not None:
            _add_split(subsets["seen"], subsets["unseen"], t, p, lambda x: " ".join(x) in train)
    result: dict = {"all": subsets["all"].result(), "strict": subsets["all"].result(strict=True)}
    if sources is not None:
        result["present"] = subsets["present"].result()
        result["absent"] = subsets["absent"].result()
    if train is not None:
        result["seen"] = subsets["seen"].result()
        result["unseen"] = subsets["unseen"].result()
    result["preds_per_post"] = n_predictions / len(targets) if targets else 0.0
    return result


def format_table(result: dict) -> str:
    """A small aligned table of a `score` result, scores in percent."""
    rows = [name for name in SUBSETS if name in result]
    f1_cols = sorted((c for c in result["all"] if c.startswith("f1@")), key=lambda c: int(c[3:]))
    cols = f1_cols + [f"map@{MAP_K}"]
    header = ["subset"] + [c.upper() for c in cols] + ["posts"]
    body = [[name] + [f"{100 * result[name][c]:.2f}" for c in cols] + [str(result[name]["n_posts"])]
            for name in rows]
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                       for j, (cell, w) in enumerate(zip(r, widths))) for r in [header] + body]
    lines.append(f"predictions per post: {result['preds_per_post']:.2f}")
    return "\n".join(lines)
