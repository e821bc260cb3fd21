"""Every valid Idefics3 vision geometry exports and validates: a matrix of (tile side, patch side,
pixel-shuffle factor) with patch grids of 4×4 up to 32×32, including the sides that are not powers of
two (6×6, and SmolVLM2-2.2B's 384 px / 14 px patches → 27×27 with factor 3), which used to fail
validation with `GatherND … invalid index found` (the traced position bucketing; see
export/wrappers.py). Per case: the export wrapper equals the student's own image features, and the
exported bundle passes export's checks — ORT vs torch features and logits, and identical greedy
tokens runtime vs torch on a left-padded batch with images.

One full export per case (~10 s each on 2 shared cores): marked slow.
"""

import pytest
import torch

from export.exporter import ExportConfig, export_bundle
from export.source import load_source
from export.families import family_parts
from mmkp_edge.manifest import Manifest
from train.tiny import TinyConfig, init_tiny

from tolerance import fp32_atol

pytestmark = pytest.mark.slow

# (tile side px, patch side px, scale factor) → grid = side // patch, tokens = (grid / factor)²
SHAPES = [(32, 8, 2),      # 4×4 (the default tiny student)
          (64, 16, 2),     # 4×4
          (128, 16, 2),    # 8×8
          (512, 16, 4),    # 32×32 (SmolVLM-256M / -500M geometry)
          (96, 16, 2),     # 6×6
          (96, 16, 3),     # 6×6
          (384, 14, 3)]    # 27×27 (SmolVLM2-2.2B geometry; the conv drops 384 - 27·14 = 6 px)


def _student(folder, side: int, patch: int, factor: int):
    cfg = TinyConfig(image_size=side, patch_size=patch, scale_factor=factor, hidden_size=32,
                     intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                     vision_hidden_size=32, vision_intermediate_size=64, vision_layers=1,
                     vision_heads=2)
    return init_tiny(folder, cfg), cfg


@pytest.mark.parametrize("side,patch,factor", SHAPES, ids=[f"{s}px-p{p}-x{f}" for s, p, f in SHAPES])
def test_vision_geometry_exports_and_validates(tmp_path, side, patch, factor):
    student, cfg = _student(tmp_path / "student", side, patch, factor)
    grid = side // patch

    # the wrapper is the student's vision path on whole tiles (it replaces the traced bucketing)
    model = load_source(str(student)).model
    parts = family_parts(model, side)
    assert torch.equal(parts.vision_encoder.position_ids, torch.arange(grid * grid))
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = parts.vision_encoder(pixels)                                   # (N, tokens, D)
        theirs = model.model.get_image_features(pixels[None]).pooler_output   # [(N·tokens, D)]
    assert ours.shape == (2, (grid // factor) ** 2, cfg.hidden_size)
    theirs = theirs[0].reshape(ours.shape)                                    # (N, tokens, D)
    # Same operations, but HF's vision tower gets an all-True mask where ours gets none, so the
    # attention kernel may round differently: one encoder layer (attention over grid² patches, MLP
    # 64 wide) and the connector's 32·factor²-wide projection, each sum ≤ n·2^-24 relative
    # (tests/tolerance.py).
    widest = max(grid * grid, 64, 32 * factor ** 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=fp32_atol(theirs, widest, depth=2))

    report = export_bundle(ExportConfig(source=str(student), out=str(tmp_path / "bundle")))
    validation = report.validation
    assert report.status == "passed", validation
    assert validation["greedy"]["identical"] == validation["greedy"]["posts"]
    assert validation["greedy"]["with_image"] > 0
    manifest = Manifest.load(tmp_path / "bundle")
    assert manifest.image.max_image_size == side
    assert manifest.image.tokens_per_image == (grid // factor) ** 2 == cfg.image_seq_len
