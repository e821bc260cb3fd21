"""The demo data generator: reproducible bytes, clean splits, labels the scorer agrees with, images
that carry the scene, and a tokenizer corpus that covers every word the demo writes."""

from pathlib import Path

import numpy as np
import pytest

from mmkp_edge.errors import InputError
from mmkp_edge.images import load_image
from mmkp_edge.metrics import is_present, score, source_stems
from mmkp_edge.phrases import stem_key, stem_tokens
from mmkp_edge.posts import read_jsonl
from train.demo_data import DemoDataConfig, demo_corpus, demo_words, make_demo_data, read_evidence
from train.demo_data import scenes, texts
from train.demo_data.data import ALL_KEYPHRASES, SPLITS


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The default size (3000 posts), generated once; seed 3, unlike demo_corpus's sample."""
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=3)


@pytest.fixture(scope="module")
def splits(full):
    return {s: read_jsonl(full.split(s)) for s in SPLITS}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = files(make_demo_data(tmp_path / "a", n_posts=60, seed=7).root)
    b = files(make_demo_data(tmp_path / "b", n_posts=60, seed=7).root)
    c = files(make_demo_data(tmp_path / "c", n_posts=60, seed=8).root)
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    common_images = [k for k in a if k.endswith(".png") and k in c]
    assert any(a[k] != c[k] for k in common_images)


def test_split_sizes_and_disjoint_ids(full, splits):
    assert {s: len(p) for s, p in splits.items()} == {"train": 2400, "valid": 300, "test": 300}
    assert full.stats["posts"] == {"train": 2400, "valid": 300, "test": 300}
    ids = [p.id for posts in splits.values() for p in posts]
    assert len(ids) == len(set(ids)) == 3000


def test_images_resolve_relative_to_the_jsonl_and_load(full, splits, tmp_path):
    posts = [p for ps in splits.values() for p in ps]
    with_image = [p for p in posts if p.image]
    assert 0 < len(with_image) < len(posts)                     # both image and text-only posts
    for post in with_image[:200]:
        img = load_image(post.image)
        assert img is not None and img.mode == "RGB" and img.size == (64, 64)
    small = make_demo_data(tmp_path / "s", n_posts=40, image_size=32)
    post = next(p for p in read_jsonl(small.train) if p.image)
    assert load_image(post.image).size == (32, 32)


def test_evidence_covers_every_post_and_keyphrase_and_agrees_with_the_scorer(full, splits):
    evidence = read_evidence(full.evidence)
    posts = [p for ps in splits.values() for p in ps]
    assert set(evidence) == {p.id for p in posts}
    for post in posts:
        ev = evidence[post.id]
        assert ev.gold == post.keyphrases and ev.text == post.text
        assert (ev.image is None) == (post.image is None)
        source = source_stems(post.text)
        for k in ev.keyphrases:
            assert k.present == is_present(stem_tokens(k.phrase), source), (post, k)
            assert k.present or k.text_cue or k.image_cue     # every absent one has a reason
            if k.image_cue:
                assert ev.image is not None and ev.image.keyphrase == k.phrase
            if k.text_cue:
                assert k.text_cue in post.text
        rationale = ev.rationale()
        assert all(k in rationale for k in post.keyphrases)
        assert rationale.rstrip(".").endswith(post.keyphrases[-1])


def test_absent_keyphrases_are_a_substantial_share_and_mostly_need_the_image(full, splits):
    s = full.stats
    assert 0.3 <= s["absent_share"] <= 0.7
    assert s["present_share"] == pytest.approx(1 - s["absent_share"])
    assert s["absent_image_only_share"] > 0.5
    assert 0.1 <= s["text_only_share"] <= 0.4
    blind = s["test_ceiling_text_only"]              # text-only and image-aware models differ
    assert blind["present"]["map@5"] == 1.0 and blind["absent"]["map@5"] < 0.6
    # The scorer splits the test set the same way, and gold scored against itself is perfect.
    test = splits["test"]
    evidence = read_evidence(full.evidence)
    result = score([p.keyphrases for p in test], [p.keyphrases for p in test],
                   sources=[p.text for p in test])
    for row, present in (("present", True), ("absent", False)):
        having = [p for p in test if any(k.present == present for k in evidence[p.id].keyphrases)]
        assert result[row]["n_posts"] == len(having)
        assert result[row]["map@5"] == result[row]["f1@5"] == 1.0


def test_some_test_keyphrases_are_unseen_in_train_and_present_in_the_text(full, splits):
    train = {stem_key(k) for p in splits["train"] + splits["valid"] for k in p.keyphrases}
    unseen = [(p, k) for p in splits["test"] for k in p.keyphrases if stem_key(k) not in train]
    assert unseen and {k for _, k in unseen} <= set(texts.UNSEEN_TOPICS)
    assert all(is_present(stem_tokens(k), source_stems(p.text)) for p, k in unseen)
    assert full.stats["test_unseen_share"] == pytest.approx(
        len(unseen) / sum(len(p.keyphrases) for p in splits["test"]), abs=1e-4)


def test_the_image_alone_identifies_its_colour(full, splits):
    """The pixels carry the scene: the most saturated pixels are nearest the scene's colour."""
    evidence = read_evidence(full.evidence)
    palette = {name: np.array(rgb, dtype=float) for name, rgb in scenes.COLOURS.items()}
    for post in [p for p in splits["valid"] if p.image]:
        pixels = np.asarray(load_image(post.image), dtype=float).reshape(-1, 3)  # (H*W, 3)
        saturated = pixels[np.ptp(pixels, axis=1) > 100]              # (N, 3) the shape's pixels
        mean = saturated.mean(axis=0)
        guess = min(palette, key=lambda c: np.linalg.norm(palette[c] - mean))
        assert guess == evidence[post.id].image.colour


def test_no_template_word_collides_with_a_keyphrase():
    """Every keyphrase stems uniquely, and no hint or filler line contains one."""
    keyphrases = list(ALL_KEYPHRASES)
    assert len({stem_key(k) for k in keyphrases}) == len(keyphrases)
    lines = list(texts.VAGUE_LINES) + [h for s in scenes.SCENES for h in s.hints]
    lines += [t.format(kp="") for t in texts.TOPIC_TEMPLATES]
    for line in lines:
        assert not any(is_present(stem_tokens(k), source_stems(line)) for k in keyphrases), line


def test_demo_corpus_covers_every_word_the_demo_writes(full, splits):
    vocab = set(demo_words())
    assert vocab == {w for line in demo_corpus() for w in line.split()}
    evidence = read_evidence(full.evidence)
    for post in [p for ps in splits.values() for p in ps]:
        words = post.text.split() + " ".join(post.keyphrases).split()
        words += evidence[post.id].rationale().split()
        assert set(words) <= vocab, set(words) - vocab


@pytest.mark.parametrize("bad", [{"n_posts": 10}, {"image_size": 8}, {"image_share": 1.5},
                                 {"n_posts": 30, "test_share": 0.0}])
def test_bad_config_is_refused(bad):
    with pytest.raises(InputError):
        DemoDataConfig(**bad).validate()
