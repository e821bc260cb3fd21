"""The demo's visual vocabulary: eight scenes, each one large coloured shape, drawn with Pillow.

The demo must show what an image adds, with a student so small (hidden ~64, one or two layers,
32-64 px images) that it trains in minutes on two CPUs. So the images carry exactly one fact, drawn
so that a tiny SigLIP-like encoder can see it: one shape filling most of the picture, four strong
colours on pale, low-saturation backgrounds. Neither cue alone names the scene (three scenes are
circles, every colour is used twice), so the student has to combine colour and shape. Each scene
gives an *absent* keyphrase (it is never written in the post's text); some posts hint at it in words
that do not contain it (`hints`), which a text-only model can exploit too.

Randomness lives in `ImageSpec` (drawn by the data generator's seeded RNG); `draw` is a pure
function of the spec and the size, so images are byte-for-byte reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

SUPERSAMPLE = 4   # draw at 4x and downscale: smooth edges without a blur the tiny encoder must undo


@dataclass(frozen=True)
class Scene:
    keyphrase: str               # the absent keyphrase this image gives
    colour: str                  # colour name, one of COLOURS
    shape: str                   # shape name, one of SHAPES
    depicts: str                 # what the drawing stands for, for rationales ("the sun")
    hints: tuple[str, ...]       # text that implies the scene without containing the keyphrase


SCENES: tuple[Scene, ...] = (
    Scene("sunshine", "yellow", "circle", "the sun", ("the sun is out", "warm and bright outside")),
    Scene("gold star", "yellow", "star", "a prize", ("top marks again", "first place for me")),
    Scene("love", "red", "heart", "a valentine", ("my heart is full", "you mean the world to me")),
    Scene("apple", "red", "circle", "a piece of fruit", ("fresh fruit for a snack",
                                                         "one a day keeps the doctor away")),
    Scene("pine tree", "green", "triangle", "a tree",
          ("deep in the woods", "smells like the forest")),
    Scene("tennis", "green", "circle", "a ball", ("new racket day", "at the court all afternoon")),
    Scene("swimming pool", "blue", "square", "clear water",
          ("time for a swim", "cannonball into the deep end")),
    Scene("sailing", "blue", "triangle", "a sail", ("wind and waves all day", "out on the boat")),
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "yellow": (240, 200, 20), "green": (35, 160, 60), "blue": (35, 75, 215)}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250), (232, 232, 232), (246, 240, 226), (226, 236, 244), (238, 244, 232))
SHAPES = ("circle", "square", "triangle", "star", "heart")


@dataclass(frozen=True)
class ImageSpec:
    scene: int                   # index into SCENES
    background: int              # index into BACKGROUNDS
    cx: float                    # centre x, fraction of the side
    cy: float                    # centre y, fraction of the side
    radius: float                # radius of the circle the shape fits in, fraction of the side
    rotation: float              # degrees, small: shapes stay recognisable
    tint: tuple[int, int, int]   # per-channel colour jitter added to the scene colour


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """The shape as a polygon inside the unit circle (touching it), y pointing down.

    Fitting the unit circle keeps any rotation of any shape inside the picture."""
    pts = _raw_outline(shape)
    far = max(math.hypot(x, y) for x, y in pts)
    return [(x / far, y / far) for x, y in pts]


def _raw_outline(shape: str) -> list[tuple[float, float]]:
    if shape == "circle":
        return [(math.cos(2 * math.pi * i / 96), math.sin(2 * math.pi * i / 96)) for i in range(96)]
    if shape == "square":
        return [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    if shape == "triangle":
        return [(0.0, -0.9), (0.95, 0.9), (-0.95, 0.9)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.sin(math.pi * i / 5),
                 -(1.0 if i % 2 == 0 else 0.42) * math.cos(math.pi * i / 5)) for i in range(10)]
    if shape == "heart":   # the classic parametric heart, scaled to [-1, 1]
        pts = []
        for i in range(96):
            t = 2 * math.pi * i / 96
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.0, -(y + 2.5) / 16.0))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def draw(spec: ImageSpec, size: int) -> Image.Image:
    """Render one scene as an RGB image of `size` x `size` pixels."""
    scene = SCENES[spec.scene]
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[spec.background])
    colour = tuple(max(0, min(255, c + d)) for c, d in zip(COLOURS[scene.colour], spec.tint))
    angle = math.radians(spec.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    r, cx, cy = spec.radius * big, spec.cx * big, spec.cy * big
    outline = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos))
               for x, y in _unit_outline(scene.shape)]
    ImageDraw.Draw(img).polygon(outline, fill=colour)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def describe(scene: Scene) -> str:
    """What the image shows, in words a rationale can use: "a yellow circle"."""
    return f"a {scene.colour} {scene.shape}"
