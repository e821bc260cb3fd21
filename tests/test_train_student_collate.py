"""Batches for training and generation: labels cover exactly target + eos, text-only and image posts
share a batch without changing any row's result, and batched greedy decoding equals one-by-one."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmkp_edge import prompt
from mmkp_edge.posts import Post
from train.collate import (IGNORE, encode, encode_post, prompt_batch, sample_losses,
                           target_token_counts, train_batch)
from train.generation import generate_batch
from train.student import ImageStats, load_student, prompt_budget, render
from train.tiny import init_tiny

from tolerance import fp32_atol, student_atol


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return load_student(init_tiny(tmp_path_factory.mktemp("tiny") / "student"))


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(2)
    paths = []
    for i, (h, w) in enumerate([(40, 60), (64, 32), (30, 30)]):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return [Post("a", "Sunset at the beach with my dog", str(paths[0]), ("sunset", "beach")),
            Post("b", "Big game tonight", None, ("football",)),
            Post("c", "Coffee and cake on a rainy morning, what a start to the weekend", str(paths[1]),
                 ("coffee", "rainy morning", "weekend"), ocr="COFFEE"),
            Post("d", "storm", None, ("storm",)),
            Post("e", "New music video out today", str(paths[2]), ("music",))]


def _targets(ps):
    return [prompt.direct_target(p.keyphrases) for p in ps]


def test_labels_are_exactly_target_plus_eos(student, posts):
    model, processor, _ = student
    tok = processor.tokenizer
    targets = [prompt.direct_target(posts[0].keyphrases), prompt.reasoning_target("a dog", ["dog"]),
               prompt.direct_target(posts[2].keyphrases)]
    batch = train_batch(processor, posts[:3], targets)
    for b, (post, target) in enumerate(zip(posts[:3], targets)):
        r = render(processor, post)
        images = [[r.image]] if r.image is not None else None
        n_prompt = processor(text=[r.prompt], images=images)["input_ids"][0].__len__()
        tgt = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = int(batch["attention_mask"][b].sum())
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
        assert n == n_prompt + len(tgt)                                   # right padding
        labels = batch["labels"][b].tolist()
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:n] == tgt
        assert labels[n:] == [IGNORE] * (len(labels) - n)
        assert batch["input_ids"][b, n_prompt:n].tolist() == tgt
    assert target_token_counts(batch).tolist() == [
        len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in targets]


def test_mixed_text_only_and_image_batch_matches_rows_alone(student, posts):
    model, processor, _ = student
    batch = train_batch(processor, posts, _targets(posts))
    assert batch["pixel_values"].shape[:2] == (len(posts), 1)
    assert not batch["pixel_values"][1].any() and not batch["pixel_values"][3].any()  # text-only rows
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, T, V)
        for b, post in enumerate(posts):
            one = train_batch(processor, [post], _targets([post]))
            alone = model(**{k: v for k, v in one.items() if k != "labels"}).logits     # (1, T, V)
            n = alone.shape[1]
            # same math, other batch shapes (padding, kernels): rounding only, bounded by the
            # student's widest reduction × depth × 2^-23 × max|logit| (tests/tolerance.py)
            torch.testing.assert_close(together[b, :n], alone[0], rtol=0,
                                       atol=student_atol(alone[0], model.config))


def test_sample_losses_average_to_the_model_loss(student, posts):
    model, processor, _ = student
    batch = train_batch(processor, posts, _targets(posts))
    with torch.no_grad():
        out = model(**batch)
    per_row = sample_losses(out.logits, batch["labels"])                        # (B,)
    counts = target_token_counts(batch)
    # the label shift drops nothing: the first target token always follows a prompt token
    assert per_row.shape == (len(posts),) and len(set(per_row.tolist())) == len(posts)
    # the same per-token NLLs summed in another order (rows, then rows weighted): a sum of N terms,
    # N = supervised tokens, so ≤ N·2^-23·|loss|
    torch.testing.assert_close((per_row * counts).sum() / counts.sum(), out.loss, rtol=0,
                               atol=fp32_atol(out.loss, reduction=int(counts.sum())))


def test_prompt_batch_pads_left(student, posts):
    _, processor, _ = student
    batch = prompt_batch(processor, posts[:2], think="off")
    mask = batch["attention_mask"]
    lengths = mask.sum(dim=1)
    assert lengths[0] != lengths[1]
    for b in range(2):
        assert mask[b, -lengths[b]:].all() and not mask[b, :-lengths[b]].any()
    assert (batch["input_ids"][:, -1] == processor.tokenizer.convert_tokens_to_ids("<answer>")).all()


@pytest.mark.parametrize("think", ["off", "auto"])
def test_batched_greedy_generation_equals_one_by_one(student, posts, think):
    model, processor, _ = student
    batched = generate_batch(model, processor, posts, think=think, max_new_tokens=12)
    single = [generate_batch(model, processor, [p], think=think, max_new_tokens=12)[0] for p in posts]
    assert batched == single
    assert all(g.text.startswith(prompt.prime(think)) for g in batched)
    assert len({g.token_ids for g in batched}) > 1          # image and text actually matter


@pytest.mark.parametrize("think", ["off", "on"])
def test_training_ids_start_with_the_primed_generation_prompt(student, posts, think):
    _, processor, _ = student
    post = posts[2]
    target = (prompt.direct_target(post.keyphrases) if think == "off"
              else prompt.reasoning_target("a cup of coffee", post.keyphrases))
    trained = encode(processor, render(processor, post, "auto", target))
    primed = encode(processor, render(processor, post, think))
    assert trained.input_ids[:len(primed.input_ids)] == primed.input_ids
    assert trained.n_prompt < len(primed.input_ids)        # the leading tag itself is trained on


def test_unusable_image_becomes_text_only_and_is_counted(student, tmp_path):
    _, processor, _ = student
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    stats = ImageStats()
    batch = train_batch(processor, [Post("x", "hello", str(bad), ("hi",))], ["<answer>hi</answer>"], stats)
    assert stats.unusable == 1 and stats.examples[0].startswith("x: unreadable image")
    assert "pixel_values" not in batch
    assert not (batch["input_ids"] == processor.image_token_id).any()
    train_batch(processor, [Post("x", "hello", str(bad), ("hi",))], ["<answer>hi</answer>"], stats)
    assert stats.unusable == 1                             # once per post, not per epoch


def test_evaluation_answers_a_post_with_a_missing_or_broken_image_from_its_text(student, tmp_path):
    """The text-only policy in evaluation: exactly the tokens of the same post without an image."""
    model, processor, _ = student
    (tmp_path / "broken.png").write_bytes(b"not a png")
    text_only = Post("t", "Sunset at the beach with my dog", None, ("sunset",))
    missing = text_only.replace(id="m", missing_image="gone.png")     # as the readers record it
    broken = text_only.replace(id="b", image=str(tmp_path / "broken.png"))
    vanished = text_only.replace(id="v", image=str(tmp_path / "vanished.png"))   # deleted since
    stats = ImageStats()
    got = generate_batch(model, processor, [text_only, missing, broken, vanished], "off", 10, stats)
    assert len({g.token_ids for g in got}) == 1
    assert stats.unusable == 2 and "image not found" in stats.examples[1]


def _long_post(words: int = 4000) -> Post:
    return Post("long", "storm over the city " * (words // 4), None, ("storm",), ocr="SALE " * 500)


def test_a_long_post_is_cut_to_the_prompt_budget_and_its_target_kept(student, posts):
    model, processor, _ = student
    limit = prompt_budget(model, 96)
    assert limit == model.config.get_text_config().max_position_embeddings - 96
    target = prompt.direct_target(["storm", "city"])
    stats = ImageStats()
    cut = encode_post(processor, _long_post(), "auto", target, stats, limit)
    uncut = encode_post(processor, _long_post(), "auto", target)
    assert cut.truncated and not uncut.truncated and cut.n_prompt <= limit < uncut.n_prompt
    assert cut.n_prompt > limit - 8                                  # filled, not emptied
    assert cut.input_ids[cut.n_prompt:] == uncut.input_ids[uncut.n_prompt:]   # target intact
    assert cut.input_ids[:20] == uncut.input_ids[:20]                # the beginning is kept
    assert stats.truncated == 1
    for post in posts:                                                # short posts: untouched
        got = encode_post(processor, post, "off", None, None, limit)
        assert got.input_ids == encode(processor, render(processor, post, "off")).input_ids
        assert not got.truncated
    primed = encode_post(processor, _long_post(), "off", None, None, limit)
    assert primed.input_ids[:cut.n_prompt] == cut.input_ids[:cut.n_prompt]   # same cut, any think
    batch = train_batch(processor, [_long_post(), posts[1]], [target, target], None, limit)
    assert int(batch["attention_mask"][0].sum()) == len(cut.input_ids)


def test_generation_cuts_a_long_post_to_its_budget(student):
    """generate_batch (evaluation, export parity, the torch baseline) leaves max_new_tokens of the
    model's context free, as the runtime does."""
    model, processor, _ = student
    stats = ImageStats()
    out = generate_batch(model, processor, [_long_post(8000)], "off", 12, stats)
    assert stats.truncated == 1 and out[0].n_tokens >= 1


def test_target_must_start_with_the_think_prime(student, posts):
    _, processor, _ = student
    r = render(processor, posts[1], "off", "<answer>football</answer>")
    assert r.prime == "<answer>" and r.text == r.prompt + "<answer>" and r.target == "football</answer>"
    with pytest.raises(ValueError, match="prime"):
        render(processor, posts[1], "on", "<answer>football</answer>")
