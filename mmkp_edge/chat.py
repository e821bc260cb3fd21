"""Prompt text and token ids, rendered from manifest data so serving needs no transformers.

Training renders the student's chat template through transformers; export stores the rendered
template with `{image}` / `{prompt}` placeholders in the manifest, and this module fills them in:
`{prompt}` = prompt.user_text(text, ocr), `{image}` = the image's token string, which the bundle's
family writes from the image's layout (mmkp_edge.families: `image_text(grid)`), then the think-mode
prime (prompt.prime) after the generation prompt, encoded on its own as training does. Placeholders
are filled in one pass, so post text that happens to contain `{image}` or `{prompt}` stays literal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np
from tokenizers import Tokenizer

from . import prompt
from .errors import InputError
from .manifest import ChatInfo, TokenizerInfo

_PLACEHOLDER = re.compile(r"\{(image|prompt)\}")
ImageText = Callable[[tuple[int, ...]], str]   # image grid → its token string (the family's layout)


def render(chat: ChatInfo, user: str, image: str | None, think: str) -> str:
    """The full prompt text: the chat with `{prompt}` = user, `{image}` = image tokens, + the prime."""
    template = chat.text_only if image is None else chat.with_image
    values = {"prompt": user, "image": image or ""}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template) + prompt.prime(think)


class PromptEncoder:
    """Post text (+ image grid) → prompt token ids, exactly as the student was trained."""

    def __init__(self, tokenizer: Tokenizer, chat: ChatInfo, image_text: ImageText,
                 info: TokenizerInfo):
        self.tokenizer = tokenizer
        self.chat = chat
        self.image_text = image_text
        self.add_special_tokens = info.add_special_tokens

    @classmethod
    def from_file(cls, path: str | os.PathLike, chat: ChatInfo, image_text: ImageText,
                  info: TokenizerInfo) -> "PromptEncoder":
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise InputError(f"{path}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None
        return cls(tok, chat, image_text, info)

    def text(self, text: str, ocr: str = "", grid: tuple[int, ...] | None = None,
             think: str = "auto") -> str:
        """Prompt text; `grid` = the image's layout (PreparedImage.grid), None for a text-only post."""
        image = None if grid is None else self.image_text(tuple(grid))
        return render(self.chat, prompt.user_text(text, ocr), image, think)

    def encode(self, text: str, ocr: str = "", grid: tuple[int, ...] | None = None,
               think: str = "auto") -> np.ndarray:
        """Prompt token ids (T,) int64: ids(chat) + ids(prime), the prime encoded on its own
        (training's contract, train.families.PromptPieces.encode: BPE never merges across the
        prompt/answer boundary, so the ids there are the ones the student was trained on)."""
        chat = self.text(text, ocr, grid, think="auto")
        ids = self.tokenizer.encode(chat, add_special_tokens=self.add_special_tokens).ids
        primed = prompt.prime(think)
        if primed:
            ids = ids + self.tokenizer.encode(primed, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def prefix_ids(self) -> np.ndarray:
        """Ids every text-only prompt starts with (chat template + instruction up to the post),
        for prefix reuse (mmkp_edge.generate). The last token is dropped: BPE may merge it with
        the post's first characters; a prompt that does not start with these ids simply is not
        reused, so this only ever has to be a prefix of most prompts, never of all."""
        head = prompt.user_text("")                                   # instruction + "Post:"
        text = _PLACEHOLDER.sub(lambda m: head if m.group(1) == "prompt" else "",
                                self.chat.text_only.split("{prompt}")[0] + "{prompt}")
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids
        return np.asarray(ids[:-1], dtype=np.int64)

    def decode(self, ids, keep: dict[int, str] | None = None) -> str:
        """Generated ids → text. Special tokens are dropped except the ids in `keep` (id → text),
        which the parser needs (<think>, </think>, <answer>, </answer>)."""
        keep = keep or {}
        out, chunk = [], []
        for i in (int(t) for t in ids):
            if i in keep:
                out.append(self.tokenizer.decode(chunk, skip_special_tokens=True))
                out.append(keep[i])
                chunk = []
            else:
                chunk.append(i)
        out.append(self.tokenizer.decode(chunk, skip_special_tokens=True))
        return "".join(out)
