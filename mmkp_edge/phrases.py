"""Phrase tokenisation and stemming: the one definition of "the same keyphrase".

CMKP's evaluator compares keyphrases as sequences of NLTK Porter stems of their space-separated,
stripped, lowercased tokens. The scorer, the parser's de-duplication, the CoT answer filter and the
data tools must all agree on that, so it lives here and nowhere else. So does the one list of
words too common to carry a post's topic (`content_words`), used by the CMKP baselines and the
evidence teacher.
"""

from __future__ import annotations

from functools import lru_cache

from nltk.stem.porter import PorterStemmer

_STEMMER = PorterStemmer()


@lru_cache(maxsize=200_000)
def stem_word(word: str) -> str:
    """Porter stem of one token after `strip().lower()` (cached: vocabularies are small)."""
    return _STEMMER.stem(word.strip().lower())


def tokens(phrase: str) -> list[str]:
    """Split on single spaces exactly like CMKP (`"a  b"` has an empty middle token)."""
    return phrase.split(" ")


def stem_tokens(phrase: str) -> tuple[str, ...]:
    """Stemmed tokens of a phrase; the empty phrase has no tokens."""
    if not phrase.strip():
        return ()
    return tuple(stem_word(t) for t in tokens(phrase.strip()))


def stem_key(phrase: str) -> str:
    """A hashable key: two phrases are the same keyphrase iff their keys are equal."""
    return " ".join(stem_tokens(phrase))


# Function words and tweet boilerplate: never a post's topic on their own.
STOPWORDS = frozenset(
    "a an the and or of to in on at for with is are was were be been it this that i you we he she "
    "they my your our his her its me us so but if as by from not no do does did have has had just "
    "all can will rt amp".split())


def content_words(text: str) -> list[str]:
    """The post's lowercased alphabetic whitespace tokens that are not STOPWORDS, first occurrence
    order, each once."""
    return list(dict.fromkeys(w for w in text.lower().split() if w.isalpha() and w not in STOPWORDS))
