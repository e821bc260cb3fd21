"""The family seam: one name per family in every layer, and the runtime protocol can carry a family
that is not Idefics3 (3-axis position ids with per-row decode deltas, as Qwen2-VL's M-RoPE needs)
through batching, prefix reuse, joins and eviction without changing a token."""

import numpy as np
import pytest
from PIL import Image

from mmkp_edge import families
from mmkp_edge.bundle import Bundle
from mmkp_edge.generate import Generator, Request
from mmkp_edge.positions import positions_from_mask
from mmkp_edge.query import Query
from tiny_onnx import build_bundle


def test_every_layer_registers_the_same_families():
    train_families = pytest.importorskip("train.families")
    export_families = pytest.importorskip("export.families")
    assert families.names() == ("idefics3", "qwen2_vl")
    tiny = pytest.importorskip("train.tiny")
    assert (set(train_families.names()) == set(export_families.names()) == set(families.names())
            == set(tiny.FAMILIES))                                   # init-tiny builds each one
    for name in families.names():
        assert train_families.family_by_name(name).name == name
        assert export_families.family_for(name).name == name


def test_a_manifest_family_is_looked_up_in_the_registry(tmp_path):
    bundle = Bundle.load(build_bundle(tmp_path, splitting=True))
    assert isinstance(bundle.family, families.RuntimeFamily)
    assert type(bundle.family) is families.family_class(bundle.manifest.family)
    image = bundle.manifest.image.image_token
    for grid in [(0, 0), (1, 2), (3, 1)]:                    # image_tokens = what image_text holds
        assert bundle.family.image_text(grid).count(image) == bundle.family.image_tokens(grid)
    prepared = bundle.preprocessor(Image.new("RGB", (70, 40), "red"))
    assert len(prepared.pixel_values) * bundle.manifest.image.tokens_per_image \
        == bundle.family.image_tokens(prepared.grid)


class ThreeAxisPositions:
    """M-RoPE-shaped positions: (3, B, L) ids where an image's tokens share axis-0 positions and
    advance the text position by 2, not by their count; decode steps continue from there through
    per-row deltas (negative for rows with an image), like Qwen2-VL's rope deltas."""

    def __init__(self, image_token_id: int):
        self.image = image_token_id
        self.calls = []

    def prompt_positions(self, ids, mask, grids):
        assert len(grids) == len(ids)
        pos = np.ones((3, *ids.shape), np.int64)                              # (3, B, L)
        deltas = np.zeros(len(ids), np.int64)                                 # (B,)
        for b in range(len(ids)):
            cur, run = 0, 0
            for t in np.flatnonzero(mask[b]):
                if ids[b, t] == self.image:
                    pos[:, b, t] = (cur, cur + run // 2, cur + run % 2)
                    run += 1
                    continue
                if run:
                    cur, run = cur + 2, 0
                pos[:, b, t] = cur
                cur += 1
            cur += 2 if run else 0
            deltas[b] = cur - int(mask[b].sum())
            assert (len(grids[b]) == 1) == bool((ids[b] == self.image).any())
        return pos, deltas

    def step_positions(self, mask, deltas):
        step = mask.sum(axis=1, keepdims=True) - 1 + deltas[:, None]          # (B, 1)
        return np.broadcast_to(step, (3, *step.shape)).astype(np.int64)       # (3, B, 1)


class AxisZeroGraphs:
    """The tiny bundle's graphs fed axis 0 of 3-axis position ids (its decoder is 1-D)."""

    def __init__(self, graphs):
        self.inner = graphs

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, embeds, mask, positions, cache):
        assert positions.shape == (3, embeds.shape[0], embeds.shape[1]), positions.shape
        return self.inner.decode(embeds, mask, positions[0], cache)


def _image(seed, h, w):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


POSTS = [Query("a storm over the city tonight", _image(1, 40, 60)), Query("beach sunset"),
         Query("", _image(2, 17, 9)), Query("nyc marathon, food and music; summer love " * 3),
         Query("travel", _image(3, 64, 64)), Query("rain and thunder")]


def _requests(bundle):
    out = []
    for q in POSTS:
        p = None if q.image is None else bundle.preprocessor(q.image)
        ids = bundle.encoder.encode(q.text, "", None if p is None else p.grid, "auto")
        out.append(Request(ids, None if p is None else p.pixel_values, () if p is None else (p.grid,)))
    return out


def test_three_axis_positions_flow_through_batching_joins_and_eviction(tmp_path):
    bundle = Bundle.load(build_bundle(tmp_path, stop_bias=9.0))
    st = bundle.manifest.special_tokens
    reqs = _requests(bundle)
    positions = ThreeAxisPositions(st.image)
    graphs = AxisZeroGraphs(bundle.graphs)
    opts = dict(image_token_id=st.image, pad_id=st.pad, stop_ids=(*st.eos, st.answer_close),
                max_new_tokens=24, positions=positions)

    single = [Generator(graphs, [r], **opts).run()[0].tokens for r in reqs]
    batched = [o.tokens for o in Generator(graphs, reqs, **opts).run()]
    full = [o.tokens for o in Generator(graphs, reqs, use_cache=False, **opts).run()]
    reuse = Generator(graphs, [], prefix=bundle.encoder.prefix_ids(), **opts)
    schedule, index = {0: [0, 1], 1: [2, 3], 3: [4, 5]}, {}   # step → posts joining before it
    for step in range(40):                           # joins between steps, rows finish and leave
        for p in schedule.get(step, []):
            index[p] = reuse.add([reqs[p]])[0]
        reuse.step()
    assert reuse.done
    joined = [reuse.outputs[index[p]].tokens for p in range(len(reqs))]
    assert batched == single == full == joined
    assert len({len(t) for t in single}) > 1         # precondition: rows were evicted at different steps

    one_d = [o.tokens for o in Generator(bundle.graphs, reqs, **{**opts, "positions": families.family_for(
        bundle.manifest)}).run()]
    assert one_d != single                            # the positions really reached the decoder


def test_idefics3_positions_are_the_mask_rule(tmp_path):
    fam = Bundle.load(build_bundle(tmp_path)).family
    mask = np.array([[0, 1, 1], [1, 1, 1]])
    pos, deltas = fam.prompt_positions(np.zeros_like(mask), mask, [(), ()])
    assert pos.tolist() == positions_from_mask(mask).tolist() and deltas.tolist() == [0, 0]
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    assert fam.step_positions(mask, deltas).tolist() == [[2], [3]]


def test_manifests_without_the_qwen2_vl_image_keys_still_load(tmp_path):
    import json

    from mmkp_edge.errors import InputError
    from mmkp_edge.manifest import Manifest

    root = build_bundle(tmp_path)
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    for key in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
        assert data["image"].pop(key) == 0                       # written as "not used"
    path.write_text(json.dumps(data))
    assert Manifest.load(root).image.merge_size == 0             # an older bundle loads unchanged
    data["family"] = "qwen2_vl"                                  # qwen2_vl needs its settings
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="qwen2_vl image settings"):
        Manifest.load(root)
