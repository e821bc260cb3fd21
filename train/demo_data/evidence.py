"""Ground truth for every demo post: which keyphrase comes from where, and why.

The generator knows exactly why each gold keyphrase is right (the text names it, the text hints at
it, or the image shows it), so it writes that down in `evidence.jsonl` beside the splits. The `demo`
teacher turns a record into a rationale in the real teacher's format (`Evidence.rationale`), a
stand-in for a real VLM teacher that lets Fine-tune-CoT and Dynamic CoT run offline; the demo's
report uses the same records to explain what each metric row measures.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mmkp_edge.errors import InputError
from mmkp_edge.posts import read_lines

from . import texts


@dataclass(frozen=True)
class KeyphraseEvidence:
    phrase: str                  # the gold keyphrase
    present: bool                # written verbatim in the text (CMKP's "present", stemmed)
    text_cue: str | None         # the words of the text that give it: the phrase itself or a hint
    image_cue: str | None        # what the image shows that gives it ("a yellow circle"), if any
    seen: bool                   # a training keyphrase (False only for held-out test topics)

    def to_json(self) -> dict:
        return {"phrase": self.phrase, "present": self.present, "text_cue": self.text_cue,
                "image_cue": self.image_cue, "seen": self.seen}


@dataclass(frozen=True)
class ImageEvidence:
    keyphrase: str               # the scene's keyphrase
    colour: str                  # "yellow"
    shape: str                   # "circle"
    depicts: str                 # "the sun"

    def shows(self) -> str:
        return f"a {self.colour} {self.shape}"

    def to_json(self) -> dict:
        return {"keyphrase": self.keyphrase, "colour": self.colour, "shape": self.shape,
                "depicts": self.depicts}


@dataclass(frozen=True)
class Evidence:
    id: str                                  # the post id (unique across splits)
    split: str                               # train | valid | test
    text: str                                # the post text, as written to the split file
    image: ImageEvidence | None              # None for a text-only post
    keyphrases: tuple[KeyphraseEvidence, ...]  # in gold order

    @property
    def gold(self) -> tuple[str, ...]:
        return tuple(k.phrase for k in self.keyphrases)

    def rationale(self) -> str:
        """A short rationale (what the text says, what the image shows) ending in the answer.

        The sentences follow the gold order, so the rationale's last word is the last keyphrase;
        present keyphrases are mentioned together, where the first of them stands.
        """
        out = [] if self.image else [texts.NO_IMAGE]
        if self.image and not any(k.text_cue for k in self.keyphrases):
            out.append(texts.TEXT_SAYS_LITTLE)
        present = [k.phrase for k in self.keyphrases if k.present]
        for k in self.keyphrases:
            if k.present:
                if k.phrase == present[0]:
                    out.append(texts.PRESENT.format(kps=texts.join_words(present)))
            elif k.image_cue and k.text_cue:
                out.append(texts.IMAGE_AND_HINT.format(
                    shows=k.image_cue, depicts=self.image.depicts, hint=k.text_cue, kp=k.phrase))
            elif k.image_cue:
                out.append(texts.IMAGE_ONLY.format(shows=k.image_cue, depicts=self.image.depicts,
                                                   kp=k.phrase))
            else:
                out.append(texts.HINT_ONLY.format(hint=k.text_cue, kp=k.phrase))
        return " ".join(out)

    def to_json(self) -> dict:
        return {"id": self.id, "split": self.split, "text": self.text,
                "image": self.image.to_json() if self.image else None,
                "keyphrases": [k.to_json() for k in self.keyphrases]}

    @classmethod
    def from_json(cls, obj: dict) -> "Evidence":
        image = obj.get("image")
        return cls(id=obj["id"], split=obj["split"], text=obj["text"],
                   image=ImageEvidence(**image) if image else None,
                   keyphrases=tuple(KeyphraseEvidence(**k) for k in obj["keyphrases"]))


def write_evidence(records: list[Evidence], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")


def read_evidence(path: str | os.PathLike) -> dict[str, Evidence]:
    """post id → Evidence; a malformed line fails with `file:line: reason`."""
    path = Path(path)
    out: dict[str, Evidence] = {}
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = Evidence.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}:{number}: not a demo evidence record ({exc})") from None
        out[record.id] = record
    return out
