"""The demo's textual vocabulary: topics whose keyphrase is written in the post, and the templates.

Text keyphrases are *present*: the topic phrase appears verbatim in the text, in one of a few fixed
templates, so a small model can learn to copy the phrase from its slot. Four topics are held out of
training and appear only in test posts: their keyphrases are present but *unseen*, which only a
model that copies (rather than memorises a label set) can get right.

Texts are lowercase with punctuation split off by spaces, like CMKP's tokenised tweets: the scorer
splits the source on whitespace, so `coffee!` would not count as containing `coffee`. No template,
hint or filler word may contain any keyphrase (after Porter stemming); the generator checks every
post against the scorer's own presence test, so a careless new word fails loudly.
"""

from __future__ import annotations

SEEN_TOPICS: tuple[str, ...] = (
    "coffee", "football", "birthday party", "beach", "live music", "pizza",
    "road trip", "garden", "yoga", "movie night", "family dinner", "snow day")
UNSEEN_TOPICS: tuple[str, ...] = ("hiking", "cooking", "book club", "bike ride")   # test only

TOPIC_TEMPLATES: tuple[str, ...] = (
    "nothing beats {kp} with friends",
    "today was all about {kp}",
    "can not stop thinking about {kp}",
    "more {kp} please",
    "best {kp} ever",
    "so ready for {kp} this weekend",
    "{kp} time with the crew",
    "another great day of {kp}",
    "who else is up for {kp}",
    "my plan for tonight : {kp}",
)

# What an image post says when its text gives nothing away: only the image can answer.
VAGUE_LINES: tuple[str, ...] = (
    "look what i saw today", "check this out", "guess what this is", "just sharing this one",
    "a little picture for you", "this made my day", "caught this on my way home",
    "what do you think ?", "had to take a picture", "no words needed")

ENDINGS: tuple[str, ...] = ("", " !", " .", " !!")

# The sentences of the rationale the `demo` teacher writes (see evidence.Evidence.rationale).
NO_IMAGE = "There is no image, so only the text counts."
TEXT_SAYS_LITTLE = "The text itself says little."
IMAGE_ONLY = "The image shows {shows}, which looks like {depicts}: {kp}."
IMAGE_AND_HINT = ("The image shows {shows}, which looks like {depicts}, "
                  "and the text says \"{hint}\": {kp}.")
HINT_ONLY = "The text says \"{hint}\", which points to {kp}."
PRESENT = "The text talks about {kps}."


def topic_sentence(template: int, keyphrase: str, ending: int) -> str:
    return TOPIC_TEMPLATES[template].format(kp=keyphrase) + ENDINGS[ending]


def join_words(words: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
