"""Export student families: what tracing and the manifest need per VLM, behind one seam.

Keyed by the family name the manifest records (the same key as train/families and
mmkp_edge/families; tests/test_families.py checks the registries agree). The exporter asks the
family of the loaded student (`Source.family.name`) for:

    vision_size(src)           side of the square frames the vision graph takes (its example input;
                               Qwen2-VL: the pixel step, its graph takes any grid)
    graph_modules(model, size) the three graph wrappers (export/wrappers.py's shared EmbedTokens and
                               Decoder around the family's own vision module), for a merged model
                               of one of the family's model types
    image_info(src)            the manifest's `image` section (mmkp_edge.manifest.ImageInfo) from
                               the processor: preprocessing settings and the image-token layout

Registering a family: one line in `_FAMILIES` below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mmkp_edge.errors import InputError
from mmkp_edge.manifest import ImageInfo

from train import families as train_families

from .idefics3 import Idefics3Export
from .qwen2_vl import Qwen2VLExport

if TYPE_CHECKING:
    from ..source import Source
    from ..wrappers import GraphModules


class ExportFamily(Protocol):
    name: ClassVar[str]

    def vision_size(self, src: "Source") -> int: ...

    def graph_modules(self, model: Any, vision_size: int | None = None) -> "GraphModules": ...

    def image_info(self, src: "Source") -> ImageInfo: ...


_FAMILIES: dict[str, ExportFamily] = {f.name: f for f in (
    Idefics3Export(),
    Qwen2VLExport(),
)}


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def family_for(name: str) -> ExportFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise InputError(f"export knows no student family {name!r} (known: "
                         f"{', '.join(names())})") from None


def family_parts(model: Any, vision_size: int | None = None) -> "GraphModules":
    """The three wrappers for a merged (plain, non-peft) image-text-to-text model of any
    registered family; `vision_size` is the side of the frames the runtime feeds (default: the
    family's reading of the model config)."""
    if hasattr(model, "peft_config"):
        raise InputError("export needs a merged model (call train.lora merge first), not a peft model")
    family = train_families.family_for(model.config.model_type)   # refuses an unknown model type
    return family_for(family.name).graph_modules(model, vision_size)
