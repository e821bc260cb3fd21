"""The `evidence` teacher: rationales for real posts with no language model and no network.

Fine-tune-CoT needs a teacher; the paper's is GPT-4o, and offline there is none good enough (the
only real LM here, SmolLM2-135M, kept 0 of 32 rationales as a `local` teacher). This teacher is a
rationaliser built from the training posts themselves. It is told the gold keyphrases (gold mode,
the template's default) and writes down, for each one, the evidence a reader of the post could
point to:

- present keyphrases: that the text (or the image's OCR text) names it;
- absent keyphrases: the post's words that, in the *other* training posts, most often come with that
  keyphrase (leave-one-out counts, at least MIN_SUPPORT of them, so a keyphrase seen in this post only has
  no cue and says so);
- a first sentence naming the post's telling words: those that, in other posts, come with some
  keyphrase at least MIN_CUE of the time (strongest first), the cues a reasoner would start from.

What it cannot do, and a rationale from a real teacher would: read the image, or know anything the
training posts do not show. It echoes the gold answer, so the `exact` filter keeps every post with
gold keyphrases by construction; its kept rate says nothing about rationale quality.

Options (`--set options.KEY=VALUE`): `corpus` (posts file for the counts; default: the posts being
rationalised, cut to `--limit` like them), `cues` (most cue words per keyphrase, default 2),
`topic_words` (telling words named, default 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from mmkp_edge.errors import InputError
from mmkp_edge.metrics import cmkp_source, is_present, source_stems
from mmkp_edge.phrases import content_words, stem_key, stem_tokens, stem_word
from mmkp_edge.posts import Post, read_posts
from mmkp_edge.prompt import reasoning_target

from .filter import gold_phrases
from .teachers import TeacherReply, TeacherRequest, Usage


def _words(post: Post) -> list[str]:
    """Content words of the text and OCR, once each (stem-deduplicated), text first."""
    seen: dict[str, str] = {}
    for w in content_words(cmkp_source(post.text, post.ocr)):
        seen.setdefault(stem_word(w), w)
    return list(seen.values())


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


MIN_CUE = 0.2    # P(keyphrase | word) below this is no evidence (common words co-occur by chance)
MIN_SUPPORT = 2  # … nor is one other post (a word seen twice in the corpus is an accident)


class Corpus:
    """Document counts of content-word stems and of (word stem, keyphrase) pairs over posts."""

    def __init__(self, posts: Sequence[Post]) -> None:
        self.ids = {p.id for p in posts}
        self.word: Counter = Counter()                 # stem → posts containing it
        self.keys: dict[str, Counter] = {}             # stem → keyphrase key → posts with both
        for p in posts:
            stems, keys = self._parts(p)
            self.word.update(stems)
            for s in stems:
                self.keys.setdefault(s, Counter()).update(keys)

    @staticmethod
    def _parts(post: Post) -> tuple[set[str], set[str]]:
        return ({stem_word(w) for w in _words(post)},
                {stem_key(k) for k in gold_phrases(post.keyphrases)})

    def cues(self, post: Post, stems: list[str]) -> list[dict[str, float]]:
        """Per stem: P(keyphrase | word) over the posts other than `post` (leave-one-out), with
        one pseudo-count, for every keyphrase at or above MIN_CUE."""
        own_stems, own_keys = self._parts(post) if post.id in self.ids else (set(), set())
        out = []
        for stem in stems:
            own = stem in own_stems
            n = self.word[stem] - own + 1
            found = {}
            for key, both in self.keys.get(stem, Counter()).items():
                both -= own and key in own_keys
                if both >= MIN_SUPPORT and both / n >= MIN_CUE:
                    found[key] = both / n
            out.append(found)
        return out


class EvidenceTeacher:
    name = "evidence"
    model = "corpus-evidence-v1"
    max_in_flight = 64

    def __init__(self, corpus: Corpus, cues: int = 2, topic_words: int = 3) -> None:
        self.corpus, self.cues, self.topic_words = corpus, cues, topic_words

    def rationale(self, post: Post) -> str:
        words = _words(post)
        cues = self.corpus.cues(post, [stem_word(w) for w in words])  # per word: key → P(key|w)
        text_stems, ocr_stems = source_stems(post.text), source_stems(post.ocr)
        lines = []
        # The words that carry hashtag signal in other posts, strongest first.
        signal = sorted((-max(c.values()), i) for i, c in enumerate(cues) if c)
        if signal:
            lines.append("Telling words: "
                         f"{_join([words[i] for _, i in signal[:self.topic_words]])}.")
        for kp in gold_phrases(post.keyphrases):
            stems, key = stem_tokens(kp), stem_key(kp)
            if is_present(stems, text_stems):
                lines.append(f"{kp} is named in the text.")
            elif is_present(stems, ocr_stems):
                lines.append(f"{kp} is written in the image.")
            else:
                found = [words[i] for _, i in sorted((-c[key], i) for i, c in enumerate(cues)
                                                     if key in c)][:self.cues]
                verb = "point" if len(found) > 1 else "points"
                lines.append(f"{kp} is not in the post, but {_join(found)} {verb} to it." if found
                             else f"{kp} is not in the post; the post as a whole implies it.")
        return " ".join(lines)

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        text = reasoning_target(self.rationale(request.post), request.post.keyphrases)
        return TeacherReply(text, Usage(0, len(text.split())))

    async def aclose(self) -> None:
        return None


def _positive_int(options: dict, key: str, default: int) -> int:
    try:
        value = int(options.get(key, default))
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise InputError(f"evidence teacher: options.{key} must be an integer >= 1")
    return value


def build(config) -> EvidenceTeacher:
    if not config.gold:
        raise InputError("evidence teacher: it explains gold keyphrases and cannot predict; "
                         "drop --no-gold")
    source = config.options.get("corpus") or config.posts
    posts = read_posts(source)
    if not config.options.get("corpus") and config.limit is not None:
        posts = posts[:config.limit]
    if not posts:
        raise InputError(f"evidence teacher: no posts in {source}")
    return EvidenceTeacher(Corpus(posts), _positive_int(config.options, "cues", 2),
                           _positive_int(config.options, "topic_words", 3))

