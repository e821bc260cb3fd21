"""Synthetic multimodal posts for the one-command demo: seeded, offline, written in seconds.

The demo has to show, on two CPUs in minutes, the things the paper is about: keyphrases that are in
the text (present), keyphrases that only the image gives (absent, where reasoning should help),
text-only posts (the missing-modality case) and test keyphrases never seen in training. Real data
cannot be downloaded here, so the posts are made up, with the answer known by construction:

- an image post shows one scene (`scenes.SCENES`); its keyphrase is gold and first (the picture is
  the subject) and never written in the text; 30 % of image posts also hint at it in words;
- 60 % of image posts also name a topic (`texts.SEEN_TOPICS`), whose keyphrase is present;
- text-only posts (image None) name one or two topics, and 30 % hint at a scene with no image;
- test posts draw a third of their topics from `texts.UNSEEN_TOPICS`, which no other split has.

`make_demo_data` writes `train.jsonl`, `valid.jsonl`, `test.jsonl` (image paths relative to them),
`images/*.png`, `evidence.jsonl` (why each keyphrase is right, for the `demo` teacher) and
`stats.json`. One `random.Random(seed)` plans everything and drawing is pure, so the same seed gives
the same bytes. `demo_corpus` gives every word the posts and rationales use, for the tiny tokenizer.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from mmkp_edge.errors import InputError
from mmkp_edge.metrics import is_present, score, source_stems
from mmkp_edge.phrases import stem_tokens
from mmkp_edge.posts import Post, write_jsonl

from . import scenes, texts
from .evidence import Evidence, ImageEvidence, KeyphraseEvidence, write_evidence

SPLITS = ("train", "valid", "test")
ALL_KEYPHRASES: tuple[str, ...] = (tuple(s.keyphrase for s in scenes.SCENES)
                                   + texts.SEEN_TOPICS + texts.UNSEEN_TOPICS)


@dataclass(frozen=True)
class DemoDataConfig:
    n_posts: int = 3000          # posts over all three splits
    seed: int = 0                # drives every choice; same seed → identical files
    image_size: int = 64         # PNG side in pixels (the student's processor resizes anyway)
    valid_share: float = 0.1     # fraction of posts in valid
    test_share: float = 0.1      # fraction of posts in test
    image_share: float = 0.75    # fraction of posts with an image (the rest are text-only)
    topic_share: float = 0.6     # fraction of image posts whose text names a topic
    hint_share: float = 0.3      # fraction of posts whose text hints at a scene
    unseen_share: float = 0.35   # chance that a test topic is a held-out (unseen) one

    def validate(self) -> "DemoDataConfig":
        if self.n_posts < 30:
            raise InputError(f"demo data: n_posts must be >= 30 (got {self.n_posts})")
        if not 16 <= self.image_size <= 1024:
            raise InputError(f"demo data: image_size must be in 16..1024 (got {self.image_size})")
        for name in ("valid_share", "test_share", "image_share", "topic_share", "hint_share",
                     "unseen_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"demo data: {name} must be in [0, 1] (got {getattr(self, name)})")
        if min(self.split_sizes()) < 1:
            raise InputError("demo data: every split needs at least one post; "
                             "raise n_posts or the split shares")
        return self

    def split_sizes(self) -> tuple[int, int, int]:
        valid = round(self.n_posts * self.valid_share)
        test = round(self.n_posts * self.test_share)
        return self.n_posts - valid - test, valid, test


@dataclass(frozen=True)
class PlannedPost:
    evidence: Evidence                    # id, split, text, gold keyphrases and why
    image: scenes.ImageSpec | None        # how to draw the image; None for a text-only post


@dataclass(frozen=True)
class DemoData:
    root: Path                   # the output folder
    train: Path                  # train.jsonl
    valid: Path                  # valid.jsonl
    test: Path                   # test.jsonl
    evidence: Path               # evidence.jsonl (post id → why each keyphrase is right)
    stats: dict                  # what `stats()` measured (also written to stats.json)

    def split(self, name: str) -> Path:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


# ---------------------------------------------------------------- planning (no I/O)

def _image_spec(rng: random.Random, scene: int) -> scenes.ImageSpec:
    radius = rng.uniform(0.36, 0.47)      # the shape's bounding circle spans 72-94 % of the side
    slack = 0.5 - radius - 0.02           # keep it inside the picture
    return scenes.ImageSpec(
        scene=scene, background=rng.randrange(len(scenes.BACKGROUNDS)),
        cx=0.5 + rng.uniform(-slack, slack), cy=0.5 + rng.uniform(-slack, slack), radius=radius,
        rotation=rng.uniform(-12.0, 12.0), tint=tuple(rng.randint(-15, 15) for _ in range(3)))


def _topics(rng: random.Random, split: str, k: int, unseen_share: float) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        pool = (texts.UNSEEN_TOPICS if split == "test" and rng.random() < unseen_share
                else texts.SEEN_TOPICS)
        topic = rng.choice(pool)
        if topic not in out:
            out.append(topic)
    return out


def _sentence(rng: random.Random, line: str) -> str:
    return line + rng.choice(texts.ENDINGS)


def plan_post(rng: random.Random, post_id: str, split: str, cfg: DemoDataConfig) -> PlannedPost:
    """Decide one post: its image (if any), its text, its gold keyphrases and why each is right."""
    has_image = rng.random() < cfg.image_share
    scene_index = rng.randrange(len(scenes.SCENES))
    scene = scenes.SCENES[scene_index]
    if has_image:
        topics = _topics(rng, split, 1 if rng.random() < cfg.topic_share else 0, cfg.unseen_share)
    else:
        # a text-only post always names a topic; a quarter name two
        topics = _topics(rng, split, 1 if rng.random() < 0.75 else 2, cfg.unseen_share)
    hint = rng.choice(scene.hints) if rng.random() < cfg.hint_share else None

    sentences = [_sentence(rng, rng.choice(texts.TOPIC_TEMPLATES).format(kp=t)) for t in topics]
    if hint:
        sentences.append(_sentence(rng, hint))
    if has_image and (not sentences or rng.random() < 0.3):   # filler that names nothing
        sentences.insert(0, _sentence(rng, rng.choice(texts.VAGUE_LINES)))
    text = " ".join(s if s[-1] in "!.?" or i == len(sentences) - 1 else s + " ."
                    for i, s in enumerate(sentences))          # no run-on sentences

    topic_evidence = [KeyphraseEvidence(t, True, t, None, t not in texts.UNSEEN_TOPICS)
                      for t in topics]
    image = None
    keyphrases = topic_evidence
    if has_image:
        image = ImageEvidence(scene.keyphrase, scene.colour, scene.shape, scene.depicts)
        shown = KeyphraseEvidence(scene.keyphrase, False, hint, scenes.describe(scene), True)
        keyphrases = [shown] + topic_evidence
    elif hint:
        keyphrases = topic_evidence + [KeyphraseEvidence(scene.keyphrase, False, hint, None, True)]
    evidence = Evidence(post_id, split, text, image, tuple(keyphrases))
    check_labels(evidence)
    return PlannedPost(evidence, _image_spec(rng, scene_index) if has_image else None)


def check_labels(evidence: Evidence) -> None:
    """The scorer must see exactly the designed present keyphrases in the text, and no others."""
    source = source_stems(evidence.text)
    gold_present = {k.phrase for k in evidence.keyphrases if k.present}
    for phrase in ALL_KEYPHRASES:
        if is_present(stem_tokens(phrase), source) != (phrase in gold_present):
            raise AssertionError(f"demo data bug: {phrase!r} presence is wrong in "
                                 f"{evidence.text!r}")


def plan(cfg: DemoDataConfig) -> list[PlannedPost]:
    """Every post of every split, in split order; a pure function of the config."""
    rng = random.Random(cfg.seed)
    out: list[PlannedPost] = []
    for split, size in zip(SPLITS, cfg.split_sizes()):
        out += [plan_post(rng, f"{split}-{i:05d}", split, cfg) for i in range(size)]
    return out


# ---------------------------------------------------------------- writing

def make_demo_data(out_dir: str | os.PathLike, n_posts: int = 3000, seed: int = 0,
                   image_size: int = 64, **overrides) -> DemoData:
    """Write the demo splits, images, evidence and stats under `out_dir`; return their paths.

    `overrides` set other `DemoDataConfig` fields (e.g. `image_share=0.5`).
    """
    cfg = DemoDataConfig(n_posts=n_posts, seed=seed, image_size=image_size, **overrides).validate()
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    planned = plan(cfg)
    posts: dict[str, list[Post]] = {s: [] for s in SPLITS}
    for p in planned:
        ev = p.evidence
        image = None
        if p.image is not None:
            image = f"images/{ev.id}.png"
            scenes.draw(p.image, cfg.image_size).save(root / image, format="PNG")
        posts[ev.split].append(Post(id=ev.id, text=ev.text, image=image, keyphrases=ev.gold))
    for split in SPLITS:
        write_jsonl(posts[split], root / f"{split}.jsonl")
    records = [p.evidence for p in planned]
    write_evidence(records, root / "evidence.jsonl")
    measured = {"config": asdict(cfg), **stats(records)}
    (root / "stats.json").write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    return DemoData(root=root, train=root / "train.jsonl", valid=root / "valid.jsonl",
                    test=root / "test.jsonl", evidence=root / "evidence.jsonl", stats=measured)


# ---------------------------------------------------------------- statistics and vocabulary

def stats(records: list[Evidence]) -> dict:
    """Posts per split and the shares that decide what the demo's metric rows can show."""
    gold = [k for r in records for k in r.keyphrases]
    test_gold = [k for r in records if r.split == "test" for k in r.keyphrases]
    absent = [k for k in gold if not k.present]

    def share(part: int, whole: int) -> float:
        return round(part / whole, 4) if whole else 0.0

    return {
        "posts": {s: sum(r.split == s for r in records) for s in SPLITS},
        "text_only_share": share(sum(r.image is None for r in records), len(records)),
        "keyphrases_per_post": share(len(gold), len(records)),
        "present_share": share(len(gold) - len(absent), len(gold)),
        "absent_share": share(len(absent), len(gold)),
        "absent_image_only_share": share(sum(k.text_cue is None for k in absent), len(absent)),
        "test_unseen_share": share(sum(not k.seen for k in test_gold), len(test_gold)),
        "test_posts_with_unseen": share(sum(any(not k.seen for k in r.keyphrases)
                                            for r in records if r.split == "test"),
                                        sum(r.split == "test" for r in records)),
        "distinct_keyphrases": len({k.phrase for k in gold}),
        "test_ceiling_text_only": text_only_ceiling([r for r in records if r.split == "test"]),
    }


def text_only_ceiling(records: list[Evidence]) -> dict:
    """Test scores of a perfect reader blind to images: it predicts every keyphrase the text gives
    (named or hinted) and nothing else, where a perfect image-aware model scores 1.0 everywhere.
    (A blind model could still guess a scene by its prior, 1 in 8, so this is not a hard bound.)"""
    targets = [r.gold for r in records]
    blind = [[k.phrase for k in r.keyphrases if k.text_cue] for r in records]
    result = score(targets, blind, sources=[r.text for r in records])
    return {row: {m: round(result[row][m], 4) for m in ("f1@1", "f1@3", "map@5")}
            for row in ("all", "present", "absent")}


def demo_corpus() -> list[str]:
    """Every text, keyphrase and rationale sentence the demo can produce, for tokenizer training.

    Covers each template with each topic, every hint and filler line, every keyphrase on its own,
    every rationale sentence filled in for every scene and topic, and the full rationales of a fixed
    sample of planned posts.
    """
    lines = [t.format(kp=k) for t in texts.TOPIC_TEMPLATES
             for k in texts.SEEN_TOPICS + texts.UNSEEN_TOPICS]
    lines += [h for s in scenes.SCENES for h in s.hints] + list(texts.VAGUE_LINES)
    lines += [line + ending for line in lines[:len(texts.TOPIC_TEMPLATES)]
              for ending in texts.ENDINGS]
    lines += list(ALL_KEYPHRASES) + ["; ".join(ALL_KEYPHRASES)]
    lines += [texts.NO_IMAGE, texts.TEXT_SAYS_LITTLE]
    lines += [texts.PRESENT.format(kps=k) for k in texts.SEEN_TOPICS + texts.UNSEEN_TOPICS]
    for s in scenes.SCENES:
        shows = scenes.describe(s)
        lines.append(texts.IMAGE_ONLY.format(shows=shows, depicts=s.depicts, kp=s.keyphrase))
        lines += [texts.IMAGE_AND_HINT.format(shows=shows, depicts=s.depicts, hint=h,
                                              kp=s.keyphrase) for h in s.hints]
        lines += [texts.HINT_ONLY.format(hint=h, kp=s.keyphrase) for h in s.hints]
    sample = plan(DemoDataConfig(n_posts=300, seed=0))
    lines += [p.evidence.rationale() for p in sample]
    return lines


def demo_words() -> list[str]:
    """The sorted set of whitespace-separated words in `demo_corpus()` (punctuation attached)."""
    return sorted({w for line in demo_corpus() for w in line.split()})
