"""The keyphrase parser: model text → ordered keyphrases, rationale and whether the model thought.

Used by evaluation in training, the CoT answer filter, the runtime and `mmkp-score` on raw model
text, so all of them read outputs the same way. It is lenient about what models actually emit
(missing closing tags, `#Hashtags`, CamelCase, commas) and strict about the result: lowercased,
de-duplicated at the stem level (phrases.stem_key), original order kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .phrases import stem_key
from .prompt import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

_TAG = re.compile(r"</?(?:think|answer)>")
_SPLIT = re.compile(r"[;,\n]")
# A hashtag boundary inside one piece: "#storm #rain" → two phrases.
_HASHTAG_SPLIT = re.compile(r"\s+(?=#)")
# CamelCase words: "StormHour" → Storm Hour; "NYCMarathon2024" → NYC Marathon 2024.
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+|[^\sA-Za-z0-9]+")
_CAMEL_WORD = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]")   # has a case boundary inside


@dataclass(frozen=True)
class ParsedOutput:
    keyphrases: list[str]          # normalised, stem-unique, in the model's order
    rationale: str | None          # text inside <think>…</think>, None if the model did not think
    thought: bool                  # the model opened a <think> span


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """Text after `open_tag` up to `close_tag` (or to the end / the next tag), None if absent."""
    start = text.find(open_tag)
    if start < 0:
        return None
    rest = text[start + len(open_tag):]
    end = rest.find(close_tag)
    if end < 0:
        nxt = _TAG.search(rest)
        end = nxt.start() if nxt else len(rest)
    return rest[:end]


def split_camel(word: str) -> str:
    """`StormHour` → `Storm Hour`; words that are not CamelCase come back unchanged."""
    if not _CAMEL_WORD.search(word):
        return word
    return " ".join(_CAMEL_PART.findall(word))


def normalise(piece: str) -> str:
    """One raw keyphrase → its canonical form (no '#', CamelCase hashtags split, lowercased)."""
    words = []
    for word in piece.split():
        hashtag = word.startswith("#")
        word = word.lstrip("#")
        single_capitalised = len(piece.split()) == 1 and word[:1].isupper()
        words.append(split_camel(word) if hashtag or single_capitalised else word)
    return " ".join(" ".join(words).lower().split())


def keyphrases_from_answer(answer: str) -> list[str]:
    """Split an answer span into normalised phrases, de-duplicated by stem, order kept."""
    out: list[str] = []
    seen: set[str] = set()
    for chunk in _SPLIT.split(answer):
        for piece in _HASHTAG_SPLIT.split(chunk.strip()):
            phrase = normalise(piece)
            key = stem_key(phrase)
            if phrase and key and key not in seen:
                seen.add(key)
                out.append(phrase)
    return out


def parse(text: str) -> ParsedOutput:
    """Read a model's (or teacher's) output.

    The answer is the `<answer>` span; without one, the text after `</think>`; without that, the
    whole text with any tags removed.
    """
    thought = THINK_OPEN in text
    rationale = _between(text, THINK_OPEN, THINK_CLOSE)
    answer = _between(text, ANSWER_OPEN, ANSWER_CLOSE)
    if answer is None:
        tail = text.split(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else ("" if thought else text)
        answer = _TAG.sub(" ", tail)
    return ParsedOutput(keyphrases=keyphrases_from_answer(answer),
                        rationale=" ".join(rationale.split()) if rationale is not None else None,
                        thought=thought)
