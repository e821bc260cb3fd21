"""Position ids for plain 1-D RoPE decoders: the rule a left-padded batch needs (DESIGN.md §6).

A row's real tokens sit at positions 0, 1, … counted over its attention mask (`cumsum(mask) - 1`),
so left padding and rows joining a running batch with a left-padded past keep every row's own
positions; pads get 1 (Hugging Face's convention — they are masked, the value never matters).
`TextPositions` is this rule behind the position interface families implement
(mmkp_edge.families.RuntimeFamily.prompt_positions / step_positions); Idefics3 uses it as is, and
it is the Generator's default for graphs used without a family (tests, benchmarks of a bare LM).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """position_ids = cumsum(mask) - 1, pads set to 1 (HF's convention)."""
    pos = np.cumsum(mask, axis=-1) - 1                                        # (B, L)
    return np.where(mask == 0, 1, pos).astype(np.int64)


class TextPositions:
    """1-D positions: a prompt's from its mask, a decode step's = its real tokens so far - 1."""

    def prompt_positions(self, ids: np.ndarray, mask: np.ndarray,
                         grids: Sequence[Sequence[tuple[int, ...]]] = ()
                         ) -> tuple[np.ndarray, np.ndarray]:
        """ids, mask (B, L) → position_ids (B, L) and per-row decode deltas (B,) (all 0 here)."""
        return positions_from_mask(mask), np.zeros(len(mask), np.int64)     # (B, L), (B,)

    def step_positions(self, mask: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """mask (B, S) including the new token's column → position_ids (B, 1)."""
        return (mask.sum(axis=1, keepdims=True) - 1 + deltas[:, None]).astype(np.int64)  # (B, 1)


TEXT_POSITIONS = TextPositions()
