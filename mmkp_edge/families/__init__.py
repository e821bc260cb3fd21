"""Runtime student families: what the torch-free runtime does differently per VLM, behind one seam.

A bundle's `manifest.family` names its family; `family_for(manifest)` builds that family's runtime
object from the manifest, and the loader, the prompt encoder, the predictor and the generator call
it instead of assuming one architecture. Everything family-free stays where it is: opening images
(images.py), the prompt contract (prompt.py), chat rendering and tokenization (chat.py), the
decoding rules (decoding.py), the decode loop (generate.py). A family is one module per layer —
train/families/<name>.py (load, LoRA targets, prompt pieces), export/families/<name>.py (graph
wrappers, manifest image info), mmkp_edge/families/<name>.py (below) — each registered under the
same name; tests/test_families.py checks the three registries agree.

The runtime protocol, `RuntimeFamily`, built as `cls(manifest)`:

    check_manifest(manifest)     classmethod: refuse (InputError, one line) a manifest whose
                                 family-specific fields this family cannot serve
    preprocess(image)            RGB PIL image → PreparedImage(pixel_values, grid)
    image_text(grid)             the text that replaces `{image}` in the chat for that image
    image_tokens(grid)           how many image-token rows that text holds (= vision feature rows)
    prompt_positions(ids, mask, grids)
                                 left-padded prompts (B, L) and each row's image grids → the
                                 decoder's position_ids, (B, L) or (A, B, L), and per-row decode
                                 deltas (B,)
    step_positions(mask, deltas) one new token per row, mask (B, S) with its column → (B, 1) or
                                 (A, B, 1)
    mlx_graphs(root, manifest)   the MLX backend for an `mmkp-export --mlx` bundle (or InputError)

Idefics3 / SmolVLM (idefics3.py): square tiles, grid = (rows, cols) with (0, 0) for one global
view, 64 tokens per frame, 1-D positions (`mmkp_edge.positions`: cumsum(mask) - 1, deltas 0).

Qwen2-VL (qwen2_vl.py) fits the same calls:
- `preprocess` resizes to a multiple of patch·merge within a pixel budget and flattens patches:
  pixel_values (t·h·w, C·temporal·p·p), grid = (t, h, w) — `grid_thw`, not a square tile;
- `image_text(grid)` is `<|vision_start|>` + `<|image_pad|>` × (t·h·w / merge²) +
  `<|vision_end|>`, so `image_tokens` depends on the image's size;
- `prompt_positions` returns M-RoPE ids of shape (3, B, L) (temporal, height, width: text tokens
  advance all three together, an image's tokens take their t/h/w grid indices after the text
  before them) and `deltas[b]` = max position + 1 − real tokens of row b;
- `step_positions` is (mask.sum − 1 + delta) broadcast to (3, B, 1).
The generator never looks inside positions: it slices them on the last axis (prefix reuse), pads
them there (joins) and carries deltas with their rows (eviction), so both shapes flow through.

Registering a family: one line in `_FAMILIES` below. `names()` is the one list of families this
runtime serves (mmkp_edge.manifest.RUNTIME_FAMILIES is derived from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..preprocess import PreparedImage
from .idefics3 import Idefics3
from .qwen2_vl import Qwen2VL

if TYPE_CHECKING:
    from PIL import Image

    from ..manifest import Manifest


@runtime_checkable
class RuntimeFamily(Protocol):
    """What the runtime asks a family (see the module docstring); built as `cls(manifest)`."""

    name: ClassVar[str]

    @classmethod
    def check_manifest(cls, manifest: "Manifest") -> None: ...

    def preprocess(self, image: "Image.Image") -> PreparedImage: ...

    def image_text(self, grid: tuple[int, ...]) -> str: ...

    def image_tokens(self, grid: tuple[int, ...]) -> int: ...

    def prompt_positions(self, ids: np.ndarray, mask: np.ndarray,
                         grids: Sequence[Sequence[tuple[int, ...]]]
                         ) -> tuple[np.ndarray, np.ndarray]: ...

    def step_positions(self, mask: np.ndarray, deltas: np.ndarray) -> np.ndarray: ...

    def mlx_graphs(self, root: Any, manifest: "Manifest") -> Any: ...


_FAMILIES: dict[str, type] = {cls.name: cls for cls in (
    Idefics3,
    Qwen2VL,
)}


def names() -> tuple[str, ...]:
    """The families this runtime serves, in registration order."""
    return tuple(_FAMILIES)


def family_class(name: str) -> type:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise InputError(f"manifest: family {name!r} is not one this runtime serves "
                         f"({', '.join(names())}); use an mmkp-edge that knows it, or "
                         f"export a student of a supported family") from None


def family_for(manifest: "Manifest") -> RuntimeFamily:
    """The runtime family of a (validated) manifest, built from it."""
    return family_class(manifest.family)(manifest)


__all__ = ["PreparedImage", "RuntimeFamily", "family_class", "family_for", "names"]
