"""Generation invariants on a tiny real ONNX VLM (tests/tiny_onnx.py), torch-free.

Batching, KV caching and eviction are optimisations: none may change a single generated token.
Think `off` must make reasoning tokens impossible, not merely unlikely.
"""

import numpy as np
import pytest
from PIL import Image

from mmkp_edge.bundle import Bundle
from mmkp_edge.errors import InputError
from mmkp_edge.generate import Generator, Request, left_pad, positions_from_mask
from mmkp_edge.predictor import KeyphrasePredictor
from mmkp_edge.query import Query
from tiny_onnx import build_bundle
from tolerance import fp32_atol


def _image(seed: int, h: int, w: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


POSTS = [Query("a storm over the city tonight", _image(1, 40, 60), id="a"),
         Query("beach sunset", None, id="b"),
         Query("", _image(2, 17, 9), id="c"),
         Query("nyc marathon, food and music; summer love " * 3, None, ocr="sale 50%", id="d"),
         Query("travel", _image(3, 64, 64), id="e"),
         Query("rain and thunder", None, id="f")]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), stop_bias=9.0)


@pytest.fixture(scope="module")
def predictor(bundle_dir):
    return KeyphrasePredictor.from_bundle(bundle_dir)


def _requests(bundle: Bundle, think="auto"):
    out = []
    for q in POSTS:
        if q.image is None:
            out.append(Request(bundle.encoder.encode(q.text, q.ocr, None, think)))
        else:
            p = bundle.preprocessor(q.image)
            out.append(Request(bundle.encoder.encode(q.text, q.ocr, (p.rows, p.cols), think), p.pixel_values))
    return out


def _options(bundle: Bundle, **kw):
    st = bundle.manifest.special_tokens
    return {"image_token_id": st.image, "pad_id": st.pad, "stop_ids": (*st.eos, st.answer_close),
            "max_new_tokens": 24, **kw}


def test_left_padding_and_positions():
    ids, mask = left_pad([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [1, 1, 0]]


def test_batched_equals_one_by_one(predictor):
    batched = predictor.predict(POSTS, batch_size=4)
    single = predictor.predict(POSTS, batch_size=1)
    assert [p.id for p in batched] == [q.id for q in POSTS]
    assert all(p.error is None for p in batched)
    assert [p.token_ids for p in batched] == [p.token_ids for p in single]
    assert [p.keyphrases for p in batched] == [p.keyphrases for p in single]
    assert len({p.generated_tokens for p in batched}) > 1     # rows really finished at different times


def test_cached_decode_equals_full_recompute(predictor):
    bundle = predictor.bundle
    reqs = _requests(bundle)
    cached = Generator(bundle.graphs, reqs, **_options(bundle))
    full = Generator(bundle.graphs, reqs, **_options(bundle, use_cache=False))
    m = bundle.manifest.model
    # Same math with other matrix shapes (1 new row vs all rows): rounding only. The widest sums
    # are attention over ≤ S keys (prompt + generated) and the MLP's 2·hidden; layers + lm_head
    # chained; logits here reach ~100 (random std-1.5 weights), so the bound scales with them.
    widest = max(2 * m.hidden_size, max(len(r.input_ids) for r in reqs) + 24)
    while not cached.done:
        cached.step()
        full.step()
        assert cached.logits.keys() == full.logits.keys()
        for i in cached.logits:
            np.testing.assert_allclose(cached.logits[i], full.logits[i], rtol=0,
                                       atol=fp32_atol(full.logits[i], widest, m.num_layers + 1))
    assert full.done
    assert [o.tokens for o in cached.outputs] == [o.tokens for o in full.outputs]
    assert max(len(o.tokens) for o in cached.outputs) > 5


def test_eviction_does_not_change_results(predictor):
    bundle = predictor.bundle
    reqs = _requests(bundle)
    evicting = Generator(bundle.graphs, reqs, **_options(bundle))
    evicting.run()
    keeping = Generator(bundle.graphs, reqs, **_options(bundle, evict=False))
    keeping.run()
    lengths = [len(o.tokens) for o in evicting.outputs]
    assert min(lengths) < max(lengths), "precondition: some rows finish before others"
    assert [o.tokens for o in evicting.outputs] == [o.tokens for o in keeping.outputs]
    assert [o.finish for o in evicting.outputs] == [o.finish for o in keeping.outputs]
    assert evicting.times.steps == keeping.times.steps == max(lengths)


def test_stop_and_length(predictor):
    bundle = predictor.bundle
    gen = Generator(bundle.graphs, _requests(bundle), **_options(bundle, max_new_tokens=[3, 1, 24, 24, 24, 24]))
    outs = gen.run()
    stops = set(bundle.manifest.special_tokens.eos) | {bundle.manifest.special_tokens.answer_close}
    for o, budget in zip(outs, [3, 1, 24, 24, 24, 24]):
        assert len(o.tokens) <= budget
        assert (o.finish == "stop") == (o.tokens[-1] in stops)
        assert o.finish == "stop" or len(o.tokens) == budget
        assert not any(t in stops for t in o.tokens[:-1])


def test_text_only_posts_skip_the_vision_graph(predictor, monkeypatch):
    calls = []
    real = predictor.bundle.graphs.vision
    monkeypatch.setattr(predictor.bundle.graphs, "vision",
                        lambda px, grids=(): calls.append(px.shape) or real(px, grids))
    preds = predictor.predict([q for q in POSTS if q.image is None])
    assert calls == [] and all(p.timings["vision_s"] == 0.0 for p in preds)
    predictor.predict(POSTS[:1])
    assert calls == [(1, 3, 16, 16)]


def test_the_image_reaches_the_decoder(predictor):
    bundle = predictor.bundle
    logits = []
    for seed in (1, 2):
        p = bundle.preprocessor(_image(seed, 30, 30))
        gen = Generator(bundle.graphs, [Request(bundle.encoder.encode("same text", "", (0, 0)), p.pixel_values)],
                        **_options(bundle))
        gen.step()
        logits.append(gen.logits[0])
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


def test_think_off_generates_no_reasoning_tokens(tmp_path):
    predictor = KeyphrasePredictor.from_bundle(build_bundle(tmp_path, think_bias=25.0, stop_bias=6.0))
    st = predictor.manifest.special_tokens
    auto = predictor.predict(POSTS, think="auto", max_new_tokens=12)
    assert any(st.think_open in p.token_ids for p in auto), "precondition: the toy model wants to think"
    off = predictor.predict(POSTS, think="off", max_new_tokens=12)
    for p in off:
        assert st.think_open not in p.token_ids and st.think_close not in p.token_ids
        assert p.text.startswith("<answer>") and not p.thought and p.rationale is None
    on = predictor.predict(POSTS[:2], think="on", max_new_tokens=12)
    assert all(p.text.startswith("<think>") and p.thought for p in on)


def test_image_splitting_bundle_generates(tmp_path):
    predictor = KeyphrasePredictor.from_bundle(build_bundle(tmp_path, splitting=True, stop_bias=9.0))
    bundle = predictor.bundle
    prepared = bundle.preprocessor(_image(4, 40, 70))          # → resized to multiples of 16: tiles
    assert prepared.rows * prepared.cols > 1
    ids = bundle.encoder.encode("x", "", (prepared.rows, prepared.cols))
    tokens = bundle.manifest.image.tokens_per_image
    assert int((ids == bundle.manifest.special_tokens.image).sum()) == len(prepared.pixel_values) * tokens
    batched = predictor.predict(POSTS, batch_size=3)
    single = predictor.predict(POSTS, batch_size=1)
    assert all(p.error is None for p in batched)
    assert [p.token_ids for p in batched] == [p.token_ids for p in single]


def test_a_post_longer_than_the_context_is_cut_and_leaves_its_batch_alone(predictor):
    long_post = Query("word " * 5000, id="long")
    preds = predictor.predict([POSTS[1], long_post, POSTS[5]])
    assert preds[1].error is None and preds[1].truncated and preds[1].id == "long"
    alone = predictor.predict([POSTS[1], POSTS[5]], batch_size=1)
    assert [p.token_ids for p in (preds[0], preds[2])] == [p.token_ids for p in alone]
    assert not any(p.truncated for p in alone)


def test_io_binding_path_gives_the_same_tokens(bundle_dir):
    """The CUDA path (IO binding, KV cache as OrtValues, eviction by re-upload) driven on CPU."""
    plain = Bundle.load(bundle_dir)
    bound = Bundle.load(bundle_dir)
    bound.graphs.bound_device = "cpu"
    reqs = _requests(plain)
    a = Generator(plain.graphs, reqs, **_options(plain))
    b = Generator(bound.graphs, reqs, **_options(bound))
    assert [o.tokens for o in a.run()] == [o.tokens for o in b.run()]
    assert not isinstance(b._cache.tensors[0], np.ndarray)


def test_request_and_generator_api_matches_predict(predictor):
    """The primitives benchmarks and export parity use give exactly predict()'s tokens."""
    preds = predictor.predict(POSTS[:3], think="off", batch_size=3, max_new_tokens=10)
    gen = predictor.generator([predictor.request(q, think="off") for q in POSTS[:3]], "off", 10)
    first = gen.step()                                       # prefill: one token per post (TTFT)
    assert [i for i, _ in first] == [0, 1, 2]
    assert [o.tokens for o in gen.run()] == [list(p.token_ids) for p in preds]
    with pytest.raises(InputError, match="not found"):
        predictor.request(Query("x", "/no/such.jpg"))


def test_image_placeholder_in_post_text_is_an_item_error(predictor):
    preds = predictor.predict([Query("look <image> here", id="sneaky"), POSTS[0], POSTS[1]])
    assert preds[0].error and "<image>" in preds[0].error
    assert preds[1].error is None and preds[2].error is None


# ------------------------------------------------------------ continuous batching (Generator.add)

# step number → posts (indices into POSTS) that join before that step
SCHEDULES = [{0: [0, 1], 1: [2], 3: [3, 4], 7: [5]},
             {0: [3], 2: [1, 0], 4: [5], 5: [2, 4]},
             {0: [5], 1: [4], 2: [3], 3: [2], 4: [1], 5: [0]}]


def _drive(gen: Generator, reqs, schedule, record=None) -> dict[int, int]:
    """Run `gen`, adding posts per `schedule`; returns post → request index. `record` gets
    (running past length or None, newcomers' longest prompt) at every join."""
    index, step = {}, 0
    while step <= max(schedule) or not gen.done:
        if step in schedule:
            if record is not None:
                running = gen.running.any() and gen._mask is not None
                record.append((gen._mask.shape[1] if running else None,
                               max(len(reqs[p].input_ids) for p in schedule[step])))
            for p, i in zip(schedule[step], gen.add([reqs[p] for p in schedule[step]])):
                index[p] = i
        gen.step()
        step += 1
    return index


def _one_by_one(bundle: Bundle, reqs) -> list[list[int]]:
    return [Generator(bundle.graphs, [r], **_options(bundle)).run()[0].tokens for r in reqs]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_joining_between_steps_equals_one_by_one(predictor, schedule):
    bundle = predictor.bundle
    reqs = _requests(bundle)
    joins = []
    gen = Generator(bundle.graphs, [], **_options(bundle))
    index = _drive(gen, reqs, schedule, joins)
    assert [gen.outputs[index[p]].tokens for p in range(len(POSTS))] == _one_by_one(bundle, reqs)
    assert any(past is not None for past, _ in joins), "precondition: some posts joined running rows"


def test_joins_pad_both_ways_and_match_full_recompute(predictor):
    """KV alignment checked on logits, not only argmax: cached + joined vs recomputed from scratch."""
    bundle = predictor.bundle
    reqs = _requests(bundle)
    joins = []
    for schedule in SCHEDULES:
        cached = Generator(bundle.graphs, [], **_options(bundle))
        full = Generator(bundle.graphs, [], **_options(bundle, use_cache=False))
        step = 0
        while step <= max(schedule) or not cached.done:
            if step in schedule:
                if cached.running.any():
                    joins.append((cached._mask.shape[1], max(len(reqs[p].input_ids) for p in schedule[step])))
                cached.add([reqs[p] for p in schedule[step]])
                full.add([reqs[p] for p in schedule[step]])
            cached.step()
            full.step()
            assert cached.logits.keys() == full.logits.keys()
            for i in cached.logits:
                np.testing.assert_allclose(cached.logits[i], full.logits[i], atol=1e-4, rtol=1e-4)
            step += 1
        assert full.done and [o.tokens for o in cached.outputs] == [o.tokens for o in full.outputs]
    assert any(past > new for past, new in joins), "precondition: a newcomer's past was padded"
    assert any(past < new for past, new in joins), "precondition: the running rows' past was padded"


@pytest.mark.parametrize("mode", ["keep-finished", "io-binding"])
def test_joining_in_the_other_generator_modes(bundle_dir, mode):
    bundle = Bundle.load(bundle_dir)
    options = _options(bundle)
    if mode == "keep-finished":
        options["evict"] = False
    else:
        bundle.graphs.bound_device = "cpu"
    reqs = _requests(bundle)
    gen = Generator(bundle.graphs, [], **options)
    index = _drive(gen, reqs, SCHEDULES[0])
    assert [gen.outputs[index[p]].tokens for p in range(len(POSTS))] == _one_by_one(Bundle.load(bundle_dir), reqs)


def test_cancel_frees_the_row_and_changes_no_other(predictor):
    bundle = predictor.bundle
    reqs = _requests(bundle)[:4]
    gen = Generator(bundle.graphs, reqs[:3], **_options(bundle, max_new_tokens=40))
    gen.step()
    gen.step()
    rows = len(gen.active)
    gen.cancel(1)
    assert len(gen.active) == rows - 1 and 1 not in gen.active.tolist()
    late = gen.add([reqs[3]])[0]
    gen.cancel(late)                                         # never prefilled
    assert gen.pending == 0 and gen.outputs[late].finish == "cancelled"
    gen.run()
    ref = [Generator(bundle.graphs, [r], **_options(bundle, max_new_tokens=40)).run()[0].tokens for r in reqs]
    assert gen.outputs[1].finish == "cancelled" and gen.outputs[1].tokens == ref[1][:2]
    assert [gen.outputs[i].tokens for i in (0, 2)] == [ref[0], ref[2]]
    assert gen.outputs[late].tokens == []


def test_an_empty_generator_takes_requests_and_pop_forgets_them(predictor):
    bundle = predictor.bundle
    reqs = _requests(bundle)
    gen = Generator(bundle.graphs, [], **_options(bundle))
    assert gen.done and gen.step() == []
    first = gen.add(reqs[:2])
    assert first == [0, 1] and not gen.done and gen.pending == 2
    with pytest.raises(ValueError, match="still running"):
        gen.pop(0)
    gen.run()
    second = gen.add(reqs[2:3])                              # a finished generator takes more
    assert second == [2] and not gen.done
    gen.run()
    out = gen.pop(2)
    assert out.tokens == _one_by_one(bundle, reqs[2:3])[0]
    assert gen.outputs[2] is None and gen.requests[2] is None
    with pytest.raises(ValueError, match="already popped"):
        gen.pop(2)
