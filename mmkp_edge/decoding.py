"""The decoding rules, once: what every generator of this project does around greedy argmax.

Per think mode (DESIGN.md §6): the assistant turn is primed (`prompt.prime`); a row stops at the
first stop id — any end token, or `</answer>` (the answer is complete; what a model writes after
it is never read); with think=off the reasoning tags are masked so no reasoning can start. The
torch evaluation decoder (`train.generation`), export validation, the torch baseline in bench and
the runtime (`KeyphrasePredictor`) all build their stops and masks here, so the four give the same
tokens for the same model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import prompt


@dataclass(frozen=True)
class DecodingRules:
    think: str                        # off | on | auto
    prime: str                        # text the assistant turn starts with
    stop_ids: tuple[int, ...]         # a row ends at the first of these (kept in its tokens)
    suppress_ids: tuple[int, ...]     # logits set to -inf every step

    @classmethod
    def build(cls, think: str, *, eos_ids: Iterable[int | None], think_open: int, think_close: int,
              answer_close: int) -> "DecodingRules":
        eos = {int(e) for e in eos_ids if e is not None}
        return cls(think=think, prime=prompt.prime(think),
                   stop_ids=tuple(sorted(eos | {int(answer_close)})),
                   suppress_ids=(int(think_open), int(think_close)) if think == "off" else ())

    def cut(self, tokens: Sequence[int]) -> list[int]:
        """Tokens up to and including the first stop id (what a generator returns)."""
        out: list[int] = []
        for t in tokens:
            out.append(int(t))
            if t in self.stop_ids:
                break
        return out

    def finish(self, tokens: Sequence[int]) -> str:
        """"stop" when the tokens end at a stop id, else "length"."""
        return "stop" if tokens and tokens[-1] in self.stop_ids else "length"


def rules_for_manifest(special_tokens, think: str) -> DecodingRules:
    """The rules for a bundle (`manifest.special_tokens`)."""
    st = special_tokens
    return DecodingRules.build(think, eos_ids=st.eos, think_open=st.think_open,
                               think_close=st.think_close, answer_close=st.answer_close)
