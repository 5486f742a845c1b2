"""The built-in "scenes" dataset: procedurally drawn pictures a small child would describe, with ground truth.

A scene is a background (grass, sea, sand, snow, room, road) and 1-4 object groups. A group is one or more identical
objects (shape, colour, size) at one place: a column (left / middle / right), the sky (the sun), or on top of
another object ("a small cat on the box"). Everything is decided first in image fractions (`plan_scene`), then
drawn with Pillow at any resolution (`render_scene`), then described in the words of a 3-4-year-old
(`describe_scene`) or asked about (`ask_questions`).

Two promises the evaluator (nanovlm.evaluate.grounding) relies on:
- every description starts with one of OPENINGS, which names no attribute, so a model can be given the opening
  and asked to complete the rest;
- every group is named as "<count> [size] <colour> <shape>" ("two red balls", "a big blue car"), and its position
  phrase sits in the same clause ("... on the left", "On the left there is ...", "... sits on the box").
"""
from __future__ import annotations

import copy
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from ..config import ConfigError
from ..progress import progress as progress_bar
from .format import DESCRIBE_PROMPT, RECORDS_FILE, assign_split, write_records

# -----------------------------------------------------------------------------
# vocabulary

# Saturated, far apart in hue or brightness, so each stays nameable at 64 px and against the backgrounds.
COLORS = {
    "red": (214, 32, 32),
    "blue": (30, 72, 214),
    "green": (28, 150, 48),
    "yellow": (250, 212, 20),
    "orange": (247, 128, 12),
    "purple": (128, 48, 176),
    "pink": (250, 128, 192),
    "white": (250, 250, 250),
    "black": (24, 24, 24),
    "brown": (122, 72, 30),
}
ALL_COLORS = tuple(COLORS)


@dataclass(frozen=True)
class Shape:
    name: str
    plural: str
    colors: tuple[str, ...]   # colours that make sense for it (a yellow sun, not a blue one)
    scale: float              # natural size relative to other shapes: a big house is bigger than a big ball
    width: float              # bounding box, in units of the object's size s
    height: float
    verbs: tuple[str, str]    # singular, plural: "A cat sits on the left." / "Two cats sit on the left."


SHAPES = {s.name: s for s in (
    Shape("ball", "balls", ALL_COLORS, 0.80, 0.84, 0.84, ("is", "are")),
    Shape("box", "boxes", ALL_COLORS, 0.85, 1.00, 0.94, ("is", "are")),
    Shape("house", "houses", ("red", "blue", "yellow", "orange", "purple", "pink", "white", "brown", "green"),
          1.20, 0.98, 1.00, ("stands", "stand")),
    Shape("tree", "trees", ("green", "orange", "yellow", "red", "pink"), 1.25, 0.86, 1.00, ("grows", "grow")),
    Shape("sun", "suns", ("yellow", "orange", "red"), 0.90, 1.00, 1.00, ("shines", "shine")),
    Shape("car", "cars", ALL_COLORS, 0.95, 1.40, 0.70, ("is parked", "are parked")),
    Shape("cat", "cats", ("black", "white", "orange", "brown", "yellow", "pink", "purple"), 0.85, 0.76, 1.00,
          ("sits", "sit")),
    Shape("dog", "dogs", ("brown", "black", "white", "yellow", "orange", "red", "blue"), 0.85, 1.32, 0.82,
          ("stands", "stand")),
    Shape("flower", "flowers", ("red", "yellow", "pink", "purple", "blue", "white", "orange"), 0.90, 0.56, 1.04,
          ("grows", "grow")),
    Shape("boat", "boats", ALL_COLORS, 1.00, 1.30, 1.00, ("floats", "float")),
)}
# children's words for the same animals; the grounding parser reads them back
NOUN_SYNONYMS = {"cat": (("kitty", "kitties"),), "dog": (("puppy", "puppies"),)}
SIZES = ("big", "small")
SIZE_WORDS = {"big": ("big", "big", "large"), "small": ("small", "small", "little")}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
# what may stand on what ("a small cat on the box"); riders are drawn small on the support's top
SUPPORTS = {"box": ("ball", "cat", "flower"), "car": ("cat", "ball")}   # compact riders only: a dog would be a speck

# Openings name no attribute: an evaluator gives the model the opening and scores what it completes.
OPENINGS = ("I see", "I can see", "Look, I see", "In the picture, I see", "Wow, I see")
WORD_RANGES = {"short": (20, 25), "long": (60, 70)}
STYLES = ("short", "long", "vqa")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024   # pixels per side of a scene picture

COLUMN_PHRASES = {
    "left": ("on the left", "on the left", "on the left side"),
    "right": ("on the right", "on the right", "on the right side"),
    "middle": ("in the middle",),
    "top": ("in the sky", "up in the sky", "at the top"),
}

BIG, SMALL = 0.33, 0.21   # object size s as a fraction of the image height, before the shape's scale
GAP = 0.03                # between objects of one group, fraction of the image width
SKY = (138, 198, 240)


@dataclass(frozen=True)
class Background:
    name: str
    horizon: float                    # where the top band ends (fraction of height), jittered per picture
    bands: tuple                      # ((rgb, offset below the horizon), ...) after the top band
    top_color: tuple
    ground_offset: float              # objects stand below horizon + ground_offset
    shapes: tuple[str, ...]           # what belongs in such a scene
    hidden_colors: tuple[str, ...]    # too close to the ground colour to be seen there
    places: tuple[str, ...]           # how a child says where it is
    fillers: tuple[str, ...]


BACKGROUNDS = {b.name: b for b in (
    Background("grass", 0.46, (((98, 186, 74), 0.0),), SKY, 0.0,
               ("ball", "box", "house", "tree", "sun", "car", "cat", "dog", "flower"), ("green",),
               ("on the grass", "on the green grass"),
               ("The grass is soft.", "I can run on the grass.", "The sky is blue.", "It is a nice day.",
                "I want to play on the grass.")),
    Background("sea", 0.42, (((36, 112, 196), 0.0),), SKY, 0.05, ("boat", "ball", "sun"), ("blue",),
               ("on the sea", "on the blue sea", "on the water"),
               ("The water is cold.", "I see the waves.", "Splash, splash!", "The sea is so wide.",
                "I want to swim.")),
    Background("sand", 0.40, (((52, 130, 205), 0.0), ((230, 205, 140), 0.09)), SKY, 0.09,
               ("ball", "box", "boat", "cat", "dog", "tree", "sun"), ("yellow",),
               ("on the sand", "at the beach"),
               ("The sand is warm.", "I can dig in the sand.", "I love the beach.", "We can make a sand castle.",
                "The sky is blue.")),
    Background("snow", 0.46, (((244, 246, 250), 0.0),), (196, 214, 236), 0.0,
               ("ball", "box", "house", "tree", "sun", "car", "cat", "dog"), ("white",),
               ("in the snow", "on the white snow"),
               ("The snow is cold.", "Brr, it is cold.", "I can make a snowman.", "I want to play in the snow.",
                "I wear my warm hat.")),
    Background("room", 0.52, (((176, 124, 78), 0.0),), (236, 224, 198), 0.0,
               ("ball", "box", "car", "cat", "dog", "flower", "boat"), ("brown", "orange", "white"),
               ("in the room", "in my room", "on the floor"),
               ("This is my room.", "I play in my room.", "The floor is clean.", "It is cozy in here.",
                "My toys live here.")),
    Background("road", 0.44, (((98, 186, 74), 0.0), ((122, 122, 128), 0.07)), SKY, 0.07,
               ("car", "ball", "box", "cat", "dog", "sun"), (),
               ("on the road", "on the street"),
               ("Cars go on the road.", "Look both ways!", "The road is long.", "We walk on the street.",
                "I hold my mom's hand.")),
)}

GENERAL_FILLERS = (
    "Wow!", "Yay!", "It is fun.", "I like it.", "I am happy.", "So pretty!", "I love it.", "It is nice.",
    "How fun!", "I like this picture.", "It makes me happy.", "I want to play.", "Can I play too?",
    "This is a happy picture.", "I like the colors.", "Everything looks nice.", "I want to see it again.",
    "It is my best picture.", "I smile when I look.", "Look at that!",
)
# (singular, plural) child remarks per shape; {n} is the noun the description uses ("kitty", "cats")
SHAPE_REMARKS = {
    "ball": (("The {n} can bounce.", "The {n} can bounce."), ("I can kick the {n}.", "I can kick the {n}."),
             ("The {n} is round.", "The {n} are round.")),
    "box": (("The {n} is full of toys.", "The {n} are full of toys."), ("What is in the {n}?", "What is in the {n}?"),
            ("The {n} is square.", "The {n} are square.")),
    "house": (("A family lives in the {n}.", "Families live in the {n}."),
              ("The {n} has a door.", "The {n} have doors."),
              ("I want to go in the {n}.", "I want to go in the {n}.")),
    "tree": (("The {n} is tall.", "The {n} are tall."), ("Birds sit in the {n}.", "Birds sit in the {n}."),
             ("I can climb the {n}.", "I can climb the {n}.")),
    "sun": (("The {n} is hot.", "The {n} are hot."), ("The {n} is warm.", "The {n} are warm."),
            ("The {n} makes me happy.", "The {n} make me happy.")),
    "car": (("The {n} goes vroom.", "The {n} go vroom."), ("The {n} can go fast.", "The {n} can go fast."),
            ("Beep beep, says the {n}.", "Beep beep, say the {n}.")),
    "cat": (("The {n} says meow.", "The {n} say meow."), ("The {n} is soft.", "The {n} are soft."),
            ("I want to pet the {n}.", "I want to pet the {n}.")),
    "dog": (("The {n} says woof.", "The {n} say woof."), ("The {n} wants to play.", "The {n} want to play."),
            ("The {n} is happy.", "The {n} are happy.")),
    "flower": (("The {n} smells nice.", "The {n} smell nice."), ("The {n} is pretty.", "The {n} are pretty."),
               ("I can pick the {n}.", "I can pick the {n}.")),
    "boat": (("The {n} floats.", "The {n} float."), ("I want to ride the {n}.", "I want to ride the {n}."),
             ("The {n} can sail.", "The {n} can sail.")),
}


# -----------------------------------------------------------------------------
# planning a scene (resolution independent: every number is a fraction of the image side)

def _spans(labels: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Horizontal room of each used column. Fewer groups get wider room; centres stay far from the label edges."""
    if len(labels) == 1:
        return {"left": (0.04, 0.46), "middle": (0.22, 0.78), "right": (0.54, 0.96)}
    if labels == ("left", "right"):
        return {"left": (0.03, 0.48), "right": (0.52, 0.97)}
    return {"left": (0.02, 0.33), "middle": (0.35, 0.65), "right": (0.67, 0.98)}


def _column_labels(n_columns: int, rng: random.Random) -> tuple[str, ...]:
    if n_columns == 1:
        return (rng.choice(("left", "middle", "right")),)
    if n_columns == 2:   # left + right twice as often: the widest rooms
        return rng.choice((("left", "right"), ("left", "right"), ("left", "middle"), ("middle", "right")))
    return ("left", "middle", "right")


def _object_size(shape: str, size: str, rng: random.Random) -> float:
    return SHAPES[shape].scale * (BIG if size == "big" else SMALL) * rng.uniform(0.93, 1.07)


def _row_offsets(count: int, width: float, zigzag: bool) -> tuple[list[tuple[float, int]], float]:
    """Centres of `count` objects relative to the group centre, with their row (0 front, 1 back), and total width.

    A zigzag puts every other object a little behind, overlapping at most 40% of a neighbour, to fit a narrow room.
    """
    step = 0.6 * width if zigzag else width + GAP
    offsets = [((i - (count - 1) / 2) * step, i % 2 if zigzag else 0) for i in range(count)]
    return offsets, (count - 1) * step + width


def _fit_group(shape: str, count: int, room: float, rng: random.Random):
    """Choose size, count and arrangement so the group fits in `room`; fewer objects only when nothing else fits."""
    want_big = rng.random() < 0.5
    for count_try in range(count, 0, -1):
        for size in (("big", "small") if want_big else ("small",)):
            s = _object_size(shape, size, rng)
            for zigzag in (False, True):
                if zigzag and count_try == 1:
                    continue
                offsets, total = _row_offsets(count_try, SHAPES[shape].width * s, zigzag)
                if total <= room:
                    return size, count_try, s, offsets, total
    s = room / SHAPES[shape].width   # rarely needed: a small object a touch too wide for a third of the picture
    return "small", 1, s, [(0.0, 0)], room


def _choose_shapes(rng: random.Random, bg: Background):
    """Distinct shapes (so "the ball" is never ambiguous), at most three columns, optionally one rider."""
    while True:
        n_groups = rng.choices((1, 2, 3, 4), weights=(2, 4, 4, 3))[0]
        shapes = rng.sample(bg.shapes, min(n_groups, len(bg.shapes)))
        ground = [s for s in shapes if s != "sun"]
        pairs = [(rider, support) for support in ground if support in SUPPORTS
                 for rider in ground if rider in SUPPORTS[support]]
        rider = support = None
        if pairs and (len(ground) > 3 or rng.random() < 0.25):
            rider, support = rng.choice(pairs)
        columns = [s for s in ground if s != rider]
        if 1 <= len(columns) <= 3:
            return shapes, columns, rider, support


def _choose_color(rng: random.Random, shape: str, bg: Background, avoid: str | None = None) -> str:
    hidden = () if shape == "sun" else bg.hidden_colors   # the sun is drawn on the sky, not the ground
    return rng.choice([c for c in SHAPES[shape].colors if c not in hidden and c != avoid])


def _instance(shape, color, cx, base, s, facing, layer) -> dict:
    return {"shape": shape, "color": color, "cx": cx, "base": base, "s": s, "facing": facing, "layer": layer}


def _box_of(inst: dict) -> list[float]:
    spec = SHAPES[inst["shape"]]
    w, h = spec.width * inst["s"], spec.height * inst["s"]
    box = (inst["cx"] - w / 2, inst["base"] - h, inst["cx"] + w / 2, inst["base"])
    return [round(min(1.0, max(0.0, v)), 4) for v in box]


def plan_scene(rng: random.Random) -> dict:
    """Decide everything about one picture. Returns {"background", "horizon", "band_colors", "texture",
    "groups": [meta object dicts], "instances": [drawing instructions]}; all geometry in fractions."""
    bg = BACKGROUNDS[rng.choice(tuple(BACKGROUNDS))]
    horizon = bg.horizon + rng.uniform(-0.04, 0.04)
    ground_top = horizon + bg.ground_offset
    shapes, columns, rider, support = _choose_shapes(rng, bg)

    groups, instances = [], []
    labels = _column_labels(len(columns), rng)
    rng.shuffle(columns)
    spans = _spans(labels)
    for shape, label in zip(columns, labels):
        lo, hi = spans[label]
        wanted = 1 if shape == support else rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        size, count, s, offsets, total = _fit_group(shape, wanted, hi - lo, rng)
        # the group's centre: inside its room, never near the edge, so "left" always reads as left
        cx = lo + total / 2 + rng.uniform(0.3, 0.7) * (hi - lo - total)
        height = SHAPES[shape].height * s
        zig_rise = 0.35 * height if any(row for _, row in offsets) else 0.0
        base = rng.uniform(ground_top + 0.35 * (1 - ground_top) + zig_rise, 0.95)
        facing = rng.choice((-1, 1))
        color = _choose_color(rng, shape, bg)
        group_instances = [_instance(shape, color, cx + dx, base - row * zig_rise, s, facing, 1) for dx, row in offsets]
        instances += group_instances
        groups.append({"shape": shape, "color": color, "size": size, "count": count, "position": label,
                       "instances": group_instances})

    if rider:
        below = next(g for g in groups if g["shape"] == support)
        top = below["instances"][0]
        spec = SHAPES[rider]
        # sit on the box's lid or the car's roof, no wider than it
        roof, shift, room = {"box": (0.84, 0.11, 0.85), "car": (0.68, -0.05, 0.70)}[support]
        s = min(_object_size(rider, "small", rng), room * top["s"] / spec.width)
        inst = _instance(rider, _choose_color(rng, rider, bg, avoid=below["color"]),
                         top["cx"] + top["facing"] * shift * top["s"], top["base"] - roof * top["s"], s,
                         rng.choice((-1, 1)), 2)
        instances.append(inst)
        groups.append({"shape": rider, "color": inst["color"], "size": "small", "count": 1,
                       "position": below["position"], "on": support, "instances": [inst]})

    if "sun" in shapes:
        label = rng.choice(("left", "middle", "right"))
        size = rng.choice(SIZES)
        s = _object_size("sun", size, rng)
        cx = {"left": 0.18, "middle": 0.5, "right": 0.82}[label] + rng.uniform(-0.05, 0.05)
        inst = _instance("sun", _choose_color(rng, "sun", bg), cx, rng.uniform(0.15, 0.21) + s / 2, s, 1, 0)
        instances.append(inst)
        groups.append({"shape": "sun", "color": inst["color"], "size": size, "count": 1, "position": "top",
                       "instances": [inst]})

    for g in groups:
        boxes = [_box_of(inst) for inst in g.pop("instances")]
        g["x"] = round((min(b[0] for b in boxes) + max(b[2] for b in boxes)) / 2, 4)
        g["y"] = round((min(b[1] for b in boxes) + max(b[3] for b in boxes)) / 2, 4)
        g["boxes"] = boxes
    groups.sort(key=lambda g: (g["x"], g["y"]))
    return {"background": bg.name, "horizon": horizon, "groups": groups, "instances": instances,
            "band_colors": [_jitter(bg.top_color, rng)] + [_jitter(rgb, rng) for rgb, _ in bg.bands],
            "texture": [(rng.random(), rng.random(), rng.random()) for _ in range(16)]}


def _jitter(rgb, rng: random.Random, amount: int = 10) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def scene_meta(scene: dict) -> dict:
    """The record's ground truth: background and object groups (x, y = group centre, fractions of the image)."""
    return {"background": scene["background"], "objects": [dict(g) for g in scene["groups"]]}


# -----------------------------------------------------------------------------
# drawing (Pillow primitives on a supersampled canvas, shrunk with a box filter for cheap antialiasing)

def _shade(rgb, f: float):
    return tuple(int(c * f) for c in rgb)


def _tint(rgb, f: float):
    return tuple(int(c + (255 - c) * f) for c in rgb)


def _outline(rgb):
    return (0, 0, 0) if sum(rgb) < 120 else _shade(rgb, 0.45)


class _Pen:
    """Draws one object in its own units: u across (positive = the way it faces), v up from its base, both × s."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, base: float, s: float, facing: int):
        self.d, self.cx, self.base, self.s, self.f = draw, cx, base, s, facing
        self.lw = max(1, round(0.045 * s))

    def p(self, u, v):
        return (self.cx + self.f * u * self.s, self.base - v * self.s)

    def poly(self, points, fill, outline=None):
        self.d.polygon([self.p(u, v) for u, v in points], fill=fill, outline=outline, width=self.lw)

    def ellipse(self, u, v, ru, rv, fill, outline=None):
        x, y = self.p(u, v)
        rx, ry = ru * self.s, rv * self.s
        self.d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill, outline=outline, width=self.lw)

    def line(self, points, fill, width):
        self.d.line([self.p(u, v) for u, v in points], fill=fill, width=max(1, round(width * self.s)), joint="curve")


def _draw_ball(pen, rgb):
    pen.ellipse(0, 0.42, 0.42, 0.42, rgb, _outline(rgb))
    # a seam and a shine make it read as a ball rather than a flat disc (the sun is a disc with rays)
    x, y = pen.p(0.3, 0.42)
    r = 0.36 * pen.s
    start = 120 if pen.f > 0 else -60   # the arc's inner side, whichever way the ball is turned
    pen.d.arc((x - r, y - r, x + r, y + r), start, start + 120, fill=_outline(rgb), width=pen.lw)
    pen.ellipse(-0.15, 0.58, 0.09, 0.09, _tint(rgb, 0.65))


def _draw_box(pen, rgb):
    w, h, depth = 0.78, 0.72, 0.22
    x0 = -0.5
    ol = _outline(rgb)
    pen.poly([(x0, 0), (x0 + w, 0), (x0 + w, h), (x0, h)], rgb, ol)
    pen.poly([(x0, h), (x0 + depth, h + depth), (x0 + w + depth, h + depth), (x0 + w, h)], _tint(rgb, 0.35), ol)
    pen.poly([(x0 + w, 0), (x0 + w + depth, depth), (x0 + w + depth, h + depth), (x0 + w, h)], _shade(rgb, 0.72), ol)


def _draw_house(pen, rgb):
    ol = _outline(rgb)
    pen.poly([(-0.4, 0), (0.4, 0), (0.4, 0.54), (-0.4, 0.54)], rgb, ol)
    pen.poly([(-0.49, 0.54), (0, 1.0), (0.49, 0.54)], _shade(rgb, 0.62), ol)
    pen.poly([(0.08, 0), (0.26, 0), (0.26, 0.32), (0.08, 0.32)], (70, 42, 20))
    pen.poly([(-0.3, 0.2), (-0.1, 0.2), (-0.1, 0.4), (-0.3, 0.4)], (200, 232, 255), (60, 60, 60))


def _draw_tree(pen, rgb):
    pen.poly([(-0.08, 0), (0.08, 0), (0.08, 0.45), (-0.08, 0.45)], (110, 70, 35), (60, 36, 16))
    crown = ((0, 0.7, 0.3), (-0.21, 0.55, 0.22), (0.21, 0.55, 0.22))
    grow = pen.lw / pen.s
    for u, v, r in crown:   # outlines first, fills after, so the crown reads as one fluffy blob
        pen.ellipse(u, v, r + grow, r + grow, _outline(rgb))
    for u, v, r in crown:
        pen.ellipse(u, v, r, r, rgb)


def _draw_sun(pen, rgb):
    for k in range(8):
        a = k * math.pi / 4 + math.pi / 8
        pen.line([(0.37 * math.cos(a), 0.5 + 0.37 * math.sin(a)), (0.49 * math.cos(a), 0.5 + 0.49 * math.sin(a))],
                 rgb, 0.08)
    pen.ellipse(0, 0.5, 0.29, 0.29, rgb, _shade(rgb, 0.75))


def _draw_car(pen, rgb):
    ol = _outline(rgb)
    pen.poly([(-0.34, 0.38), (-0.24, 0.68), (0.18, 0.68), (0.36, 0.38)], rgb, ol)
    pen.poly([(-0.27, 0.42), (-0.2, 0.62), (-0.04, 0.62), (-0.04, 0.42)], (200, 232, 255))
    pen.poly([(0.02, 0.42), (0.02, 0.62), (0.15, 0.62), (0.28, 0.42)], (200, 232, 255))
    pen.poly([(-0.7, 0.12), (0.7, 0.12), (0.7, 0.4), (-0.7, 0.4)], rgb, ol)
    for u in (-0.4, 0.4):
        pen.ellipse(u, 0.14, 0.14, 0.14, (36, 36, 36))
        pen.ellipse(u, 0.14, 0.06, 0.06, (170, 170, 170))


def _draw_cat(pen, rgb):
    ol = _outline(rgb)
    pen.line([(-0.16, 0.08), (-0.36, 0.12), (-0.38, 0.42)], ol, 0.12)   # tail, curled up behind
    pen.line([(-0.16, 0.08), (-0.36, 0.12), (-0.38, 0.42)], rgb, 0.07)
    pen.ellipse(0, 0.28, 0.24, 0.28, rgb, ol)
    pen.poly([(-0.02, 0.76), (0.02, 0.99), (0.12, 0.82)], rgb, ol)       # pointy ears tell it from a dog
    pen.poly([(0.16, 0.83), (0.3, 0.99), (0.3, 0.75)], rgb, ol)
    pen.ellipse(0.14, 0.66, 0.18, 0.17, rgb, ol)
    pen.ellipse(0.21, 0.68, 0.03, 0.03, (20, 20, 20) if sum(rgb) > 120 else (230, 230, 90))


def _draw_dog(pen, rgb):
    ol = _outline(rgb)
    legs = _shade(rgb, 0.85)
    for u in (-0.44, -0.3, 0.14, 0.28):
        pen.poly([(u, 0), (u + 0.09, 0), (u + 0.09, 0.34), (u, 0.34)], legs, ol)   # four legs, standing
    pen.line([(-0.46, 0.44), (-0.64, 0.64)], rgb, 0.07)
    pen.ellipse(-0.06, 0.4, 0.45, 0.17, rgb, ol)
    pen.ellipse(0.4, 0.62, 0.17, 0.17, rgb, ol)
    pen.ellipse(0.57, 0.56, 0.11, 0.075, rgb, ol)                    # a long snout and floppy ear: not a cat
    pen.ellipse(0.33, 0.56, 0.06, 0.13, _shade(rgb, 0.6) if sum(rgb) > 120 else (90, 90, 90))
    pen.ellipse(0.66, 0.58, 0.03, 0.03, (20, 20, 20))


def _draw_flower(pen, rgb):
    stem = (34, 120, 34)
    pen.line([(0, 0), (0, 0.66)], stem, 0.07)
    pen.ellipse(0.1, 0.28, 0.11, 0.05, stem)
    petals = [(0.15 * math.cos(k * math.pi / 3), 0.8 + 0.15 * math.sin(k * math.pi / 3)) for k in range(6)]
    grow = pen.lw / pen.s
    for u, v in petals:   # outlines first, fills after: tiny petals must not drown in their outlines
        pen.ellipse(u, v, 0.13 + grow, 0.13 + grow, _outline(rgb))
    for u, v in petals:
        pen.ellipse(u, v, 0.13, 0.13, rgb)
    pen.ellipse(0, 0.8, 0.09, 0.09, (120, 70, 30) if rgb == COLORS["yellow"] or rgb == COLORS["orange"]
                else (250, 212, 20))


def _draw_boat(pen, rgb):
    pen.line([(-0.02, 0.26), (-0.02, 1.0)], (70, 45, 25), 0.05)
    sail = _tint(rgb, 0.75)
    pen.poly([(0.03, 0.95), (0.03, 0.34), (0.48, 0.34)], sail, (90, 90, 90))
    pen.poly([(-0.07, 0.88), (-0.07, 0.34), (-0.4, 0.34)], sail, (90, 90, 90))
    pen.poly([(-0.63, 0.3), (0.65, 0.3), (0.44, 0.0), (-0.44, 0.0)], rgb, _outline(rgb))


DRAWERS = {"ball": _draw_ball, "box": _draw_box, "house": _draw_house, "tree": _draw_tree, "sun": _draw_sun,
           "car": _draw_car, "cat": _draw_cat, "dog": _draw_dog, "flower": _draw_flower, "boat": _draw_boat}


def _draw_background(d: ImageDraw.ImageDraw, scene: dict, side: int) -> None:
    bg = BACKGROUNDS[scene["background"]]
    horizon = scene["horizon"]
    colors = scene["band_colors"]
    d.rectangle((0, 0, side, side), fill=colors[0])
    for (_, offset), rgb in zip(bg.bands, colors[1:]):
        d.rectangle((0, (horizon + offset) * side, side, side), fill=rgb)
    ground_top = horizon + bg.ground_offset
    ground = colors[-1]
    # a little texture so the ground reads as grass / water / sand rather than a flat block
    for i, (a, b, c) in enumerate(scene["texture"]):
        x, y = a * side, (ground_top + 0.03 + b * (0.95 - ground_top)) * side
        r = (0.012 + 0.012 * c) * side
        if bg.name == "grass":
            d.line((x - r, y - r, x, y, x + r, y - r), fill=_shade(ground, 0.8), width=max(1, side // 128))
        elif bg.name == "sea" and i < 10:
            d.arc((x - 2 * r, y - r, x + 2 * r, y + r), 200, 340, fill=_tint(ground, 0.35), width=max(1, side // 128))
        elif bg.name == "sand":
            d.ellipse((x - r / 3, y - r / 3, x + r / 3, y + r / 3), fill=_shade(ground, 0.85))
        elif bg.name == "snow" and i < 5:
            d.ellipse((x - 3 * r, y - r, x + 3 * r, y + r), fill=_shade(ground, 0.94))
    if bg.name == "room":
        d.rectangle((0, horizon * side - side / 50, side, horizon * side), fill=(120, 90, 60))
        for k in range(1, 4):   # floorboards
            y = (horizon + k * (1 - horizon) / 4) * side
            d.line((0, y, side, y), fill=_shade(ground, 0.85), width=max(1, side // 160))
    elif bg.name == "road":
        y = (ground_top + 0.5 * (1 - ground_top)) * side
        for k in range(6):
            x = (k + scene["texture"][0][0]) / 6 * side
            d.line((x, y, x + side / 18, y), fill=(235, 235, 235), width=max(1, side // 100))


def render_scene(scene: dict, image_size: int) -> Image.Image:
    """Draw a planned scene as an RGB image of image_size × image_size pixels."""
    supersample = max(2, -(-256 // image_size))   # Pillow draws without antialiasing: draw big, then shrink
    side = image_size * supersample
    image = Image.new("RGB", (side, side))
    d = ImageDraw.Draw(image)
    _draw_background(d, scene, side)
    # sun behind everything, then back-to-front by base line, riders last on top of their support
    for inst in sorted(scene["instances"], key=lambda i: (i["layer"], i["base"])):
        pen = _Pen(d, inst["cx"] * side, inst["base"] * side, inst["s"] * side, inst["facing"])
        DRAWERS[inst["shape"]](pen, COLORS[inst["color"]])
    return image.reduce(supersample)


# -----------------------------------------------------------------------------
# describing a scene in a 3-4-year-old's words

def count_words(text: str) -> int:
    return len(text.split())


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


class _Talk:
    """How one description names one group: its noun (kept the same through the text), mention and place."""

    def __init__(self, group: dict, rng: random.Random):
        self.g = group
        self.one = group["count"] == 1
        noun_pairs = ((group["shape"], SHAPES[group["shape"]].plural),) * 3 + NOUN_SYNONYMS.get(group["shape"], ())
        singular, plural = rng.choice(noun_pairs)
        self.noun = singular if self.one else plural
        self.be = "is" if self.one else "are"
        self.verb = SHAPES[group["shape"]].verbs[0 if self.one else 1]
        self.ref = f"the {group['color']} {self.noun}"
        self.where = None   # filled in once the order of groups is known

    def mention(self, rng: random.Random, with_size: bool) -> str:
        words = [self.g["color"], self.noun]
        if with_size:
            words.insert(0, rng.choice(SIZE_WORDS[self.g["size"]]))
        if self.one:
            count = rng.choice((_article(words[0]), _article(words[0]), "one"))
        else:
            count = NUMBER_WORDS[self.g["count"]]
        return " ".join([count] + words)


def _place_phrases(talks: list[_Talk], rng: random.Random) -> None:
    """Pick each group's position phrase; relations only point at groups already named."""
    named = {}
    for t in talks:
        g = t.g
        if "on" in g:
            target = named[g["on"]]
            t.where = rng.choice((f"on the {target.noun}", f"on top of the {target.noun}", f"on {target.ref}"))
        elif g["position"] == "top":
            t.where = rng.choice(COLUMN_PHRASES["top"])
        else:
            neighbours = [n for n in named.values() if "on" not in n.g and n.g["position"] != "top"
                          and abs(n.g["x"] - g["x"]) < 0.55]
            if neighbours and rng.random() < 0.2:
                t.where = f"next to the {rng.choice(neighbours).noun}"
            else:
                t.where = rng.choice(COLUMN_PHRASES[g["position"]])
        named[g["shape"]] = t


def _intro_sentence(t: _Talk, rng: random.Random, with_size: bool) -> str:
    m = t.mention(rng, with_size)
    there = "there is" if t.one else "there are"
    return rng.choice((
        f"{_cap(there)} {m} {t.where}.",
        f"{_cap(t.where)} {there} {m}.",
        f"I also see {m} {t.where}.",
        f"I can see {m} {t.where}.",
        f"{_cap(m)} {t.verb} {t.where}.",
        f"And {there} {m} {t.where}.",
        f"{_cap(t.where)} I see {m}.",
    ))


def _where_sentence(t: _Talk, rng: random.Random) -> str:
    return rng.choice((f"{_cap(t.ref)} {t.be} {t.where}.", f"{_cap(t.ref)} {t.verb} {t.where}.",
                       f"{_cap(t.where)} {t.be} {t.ref}."))


def _remarks(t: _Talk, rng: random.Random) -> list[str]:
    """Things a child adds about one group; none states a fact that could contradict the picture."""
    g, n = t.g, t.noun
    size = rng.choice(SIZE_WORDS[g["size"]])
    out = [f"The {n} {t.be} {g['color']}.", f"The {n} {t.be} {size}.", f"I like {t.ref}.",
           f"I love {t.ref}.", f"{_cap(t.ref)} {t.be} so pretty."]
    out += [pair[0 if t.one else 1].format(n=n) for pair in SHAPE_REMARKS[g["shape"]]]
    if not t.one:
        out.append(_cap(", ".join(NUMBER_WORDS[k] for k in range(1, g["count"] + 1))) + "!")   # "One, two, three!"
    return out


def _core(talks: list[_Talk], opening: str, rng: random.Random, compact: int):
    """The sentences that name every group: (opening sentence, {shape: [sentences]}). Higher `compact` is shorter:
    1 lists every group in the opening sentence without sizes, 2+ also drops positions (sun first)."""
    with_size = compact == 0 and rng.random() < 0.5
    if compact:
        show_place = [True] * len(talks)
        droppable = sorted(range(len(talks)), key=lambda i: talks[i].g["shape"] != "sun")
        for i in droppable[:compact - 1]:
            show_place[i] = False
        parts = [t.mention(rng, False) + (f" {t.where}" if keep else "") for t, keep in zip(talks, show_place)]
        return f"{opening} {_join(parts)}.", {}
    form = rng.choice(("one", "one", "list", "list_no_place"))
    n_listed = 1 if form == "one" else rng.randint(min(2, len(talks)), len(talks))
    listed = talks[:n_listed]
    if form == "list_no_place":
        first = f"{opening} {_join([t.mention(rng, with_size) for t in listed])}."
        blocks = {t.g["shape"]: [_where_sentence(t, rng)] for t in listed}
    else:
        first = f"{opening} {_join([t.mention(rng, with_size) + ' ' + t.where for t in listed])}."
        blocks = {t.g["shape"]: [] for t in listed}
    for t in talks[n_listed:]:
        blocks[t.g["shape"]] = [_intro_sentence(t, rng, with_size)]
    return first, blocks


def describe_scene(scene: dict, style: str, rng: random.Random) -> str:
    """A child's description of the scene with a word count inside WORD_RANGES[style], starting with an opening."""
    lo, hi = WORD_RANGES[style]
    bg = BACKGROUNDS[scene["background"]]
    for attempt in range(60):
        talks = [_Talk(g, rng) for g in scene["groups"]]
        # A child "reads" the picture left to right and names the sky last. One order per picture means the words
        # after the opening are decided by the image, not by chance: a model trained on randomly ordered
        # descriptions got 16.6% of objects right where this order gave 39.1% (same 3000 steps).
        talks.sort(key=lambda t: (t.g["position"] == "top", t.g["x"]))
        talks.sort(key=lambda t: "on" in t.g)   # a support is named before what stands on it
        _place_phrases(talks, rng)
        compact = min(attempt // 4, 5)   # a few free tries, then ever shorter cores (busy scenes need it)
        first, blocks = _core(talks, rng.choice(OPENINGS), rng, compact)
        if count_words(first) + sum(count_words(s) for b in blocks.values() for s in b) > hi:
            continue
        text = _pad(first, blocks, talks, bg, style, lo, hi, rng)
        if text:
            return text
    raise AssertionError(f"could not describe a scene in {lo}-{hi} words: {scene['groups']}")


def _pad(first, blocks, talks, bg, style, lo, hi, rng):
    """Add remarks and fillers up to a random target inside [lo, hi]; None if the range was missed."""
    place = rng.choice(bg.places)
    background = rng.choice((f"Everything is {place}.", f"We are {place}.", f"{_cap(place)} it is fun."))
    per_group = {t.g["shape"]: rng.sample(_remarks(t, rng), 5 if style == "long" else 2) for t in talks}
    general = rng.sample(bg.fillers, 3 if style == "long" else 1) + rng.sample(GENERAL_FILLERS, 12)
    # a long description talks about its things and its place before it rambles
    candidates = [("bg", background)] + [(shape, s) for shape, remarks in per_group.items() for s in remarks]
    rng.shuffle(candidates)
    candidates += [("general", s) for s in general]

    words = count_words(first) + sum(count_words(s) for b in blocks.values() for s in b)
    target = rng.randint(lo, hi)
    extra = []
    for owner, sentence in candidates:
        if words >= target:
            break
        n = count_words(sentence)
        if words + n <= hi:
            extra.append((owner, sentence))
            words += n
    if words < lo:
        return None

    sections = [list(b) for b in blocks.values()]
    index_of = {shape: i for i, shape in enumerate(blocks)}
    loose = []
    for owner, sentence in extra:
        if owner in index_of:
            sections[index_of[owner]].append(sentence)
        else:
            loose.append([sentence])
    # blocks in the order the groups were introduced keep relations after their targets; loose remarks go anywhere
    for item in loose:
        sections.insert(rng.randint(0, len(sections)), item)
    return " ".join([first] + [s for section in sections for s in section])


def split_opening(text: str) -> tuple[str, str]:
    """Split a description into (opening phrase, rest). Raises ValueError if it starts with no known opening."""
    for opening in sorted(OPENINGS, key=len, reverse=True):
        if text.startswith(opening + " "):
            return opening, text[len(opening) + 1:]
    raise ValueError(f"description does not start with one of {OPENINGS}: {text[:40]!r}")


# -----------------------------------------------------------------------------
# questions and short answers

# Question wordings per type. The LAST wording of each type is held out: training and validation scenes never use
# it, test scenes do (meta.questions[k].heldout_template), so an evaluation can tell "understood the question" from
# "memorised the sentence". A held-out wording uses only words the other wordings teach (a model trained from
# scratch has never seen any other word), in a new order. Its frame is taught with OTHER types only: "In the
# picture, ..." opens training questions of every type but position, whose held-out wording opens with it; the
# subject first and the question word last ("The ball is where?") is taught for shape, count and position, and
# held out for colour. So a model meets a known frame with a known question and must combine them, as a person
# would, instead of meeting a frame it could not have learned. Slots: {noun} (singular or plural, as many as there
# are), {be} (is/are), {plural}, {color}, {thing} ("a red ball"), {place} ("on the left"), {first}/{second}.
QUESTION_TEMPLATES = {
    "color": ("What color {be} the {noun}?", "What is the color of the {noun}?", "Which color {be} the {noun}?",
              "In the picture, what color {be} the {noun}?", "The {noun} {be} which color?"),
    "shape": ("What is the {color} thing?", "What shape is the {color} thing?", "The {color} thing is what?",
              "In the picture, what is the {color} thing?", "Which thing is {color}?"),
    "count": ("How many {plural} are there?", "How many {plural} can you see?", "How many {plural} are in the picture?",
              "In the picture, how many {plural} are there?", "There are how many {plural}?",
              "How many {plural} do you see?"),
    "count_color": ("How many {color} things are there?", "How many things are {color}?",
                    "In the picture, how many things are {color}?", "There are how many {color} things?",
                    "How many {color} things can you see?"),
    "position": ("Where {be} the {noun}?", "Where {be} the {noun} in the picture?", "The {noun} {be} where?",
                 "In the picture, where {be} the {noun}?"),
    "object_at": ("What is {place}?", "What do you see {place}?", "In the picture, what is {place}?",
                  "Which thing is {place}?"),
    "exist": ("Is there {thing}?", "Can you see {thing}?", "Do you see {thing}?", "In the picture, is there {thing}?",
              "Is {thing} in the picture?"),
    "compare": ("Are there more {first} than {second}?", "Is the number of {first} bigger than the number of {second}?",
                "In the picture, are there more {first} than {second}?", "Do you see more {first} than {second}?"),
}
QUESTION_TYPES = tuple(QUESTION_TEMPLATES)
POSITION_ANSWERS = {"left": "left", "middle": "middle", "right": "right", "top": "sky"}
PLACE_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right", "top": "in the sky"}


def _count_word(n: int) -> str:
    return NUMBER_WORDS.get(n, "zero" if n == 0 else str(n))


def _question_choices(scene: dict, rng: random.Random) -> dict[str, list[tuple[dict, str]]]:
    """For each question type, the (slots, answer) pairs this scene can answer without ambiguity."""
    bg = BACKGROUNDS[scene["background"]]
    groups = scene["groups"]
    count_of = {g["shape"]: g["count"] for g in groups}
    colors = [g["color"] for g in groups]
    absent = [s for s in bg.shapes if s not in count_of]
    out = {t: [] for t in QUESTION_TYPES}
    for g in groups:
        one = g["count"] == 1
        noun = g["shape"] if one else SHAPES[g["shape"]].plural
        slots = {"noun": noun, "be": "is" if one else "are", "plural": SHAPES[g["shape"]].plural, "color": g["color"]}
        out["color"].append((slots, g["color"]))
        out["count"].append((slots, _count_word(g["count"])))
        out["position"].append((slots, f"on the {g['on']}" if "on" in g else POSITION_ANSWERS[g["position"]]))
        if colors.count(g["color"]) == 1:
            out["shape"].append((slots, g["shape"]))
        out["exist"].append(({"thing": f"{_article(g['color'])} {g['color']} {g['shape']}"}, "yes"))
        wrong = [c for c in SHAPES[g["shape"]].colors if c != g["color"]]
        if wrong:
            c = rng.choice(wrong)
            out["exist"].append(({"thing": f"{_article(c)} {c} {g['shape']}"}, "no"))
        if "on" in g:
            out["object_at"].append(({"place": f"on the {g['on']}"}, g["shape"]))
    for shape in absent:
        out["count"].append(({"plural": SHAPES[shape].plural}, "zero"))
        out["exist"].append(({"thing": f"{_article(shape)} {shape}"}, "no"))
    for position, place in PLACE_WORDS.items():
        here = [g for g in groups if g["position"] == position]   # a rider shares its support's place
        if len(here) == 1:   # ask only where the answer is one thing ("a box with a cat on it" is two)
            g = here[0]
            out["object_at"].append(({"place": place}, g["shape"] if g["count"] == 1 else SHAPES[g["shape"]].plural))
    for color in COLORS:
        n = sum(g["count"] for g in groups if g["color"] == color)
        if n or rng.random() < 0.3:   # mostly colours that are there; "zero" now and then
            out["count_color"].append(({"color": color}, _count_word(n)))
    shapes = list(count_of) + absent[:1]
    for a in shapes:
        for b in shapes:
            if a != b and count_of.get(a, 0) != count_of.get(b, 0):   # equal counts would make "no" the easy guess
                out["compare"].append(({"first": SHAPES[a].plural, "second": SHAPES[b].plural},
                                       "yes" if count_of.get(a, 0) > count_of.get(b, 0) else "no"))
    return out


def ask_questions(scene: dict, rng: random.Random, n: int = 5, heldout_templates: bool = False) -> list[dict]:
    """`n` questions of different types about the scene: {"user", "assistant" (a short answer), "type",
    "template" ("count/2"), "heldout_template"}. Held-out wordings are used only with heldout_templates (test
    scenes); yes and no are equally likely for yes/no questions."""
    choices = _question_choices(scene, rng)
    kinds = [k for k in QUESTION_TYPES if choices[k]]
    rng.shuffle(kinds)
    asked, seen = [], set()
    for kind in kinds * 2:   # one question per type first; a second round only when the scene allows few types
        if len(asked) == n:
            break
        pool = choices[kind]
        if kind in ("exist", "compare"):   # balance yes and no
            answer = rng.choice(sorted({a for _, a in pool}))
            pool = [p for p in pool if p[1] == answer]
        slots, answer = rng.choice(pool)
        templates = QUESTION_TEMPLATES[kind]
        index = rng.randrange(len(templates) if heldout_templates else len(templates) - 1)
        question = templates[index].format(**slots)
        question = question[:1].upper() + question[1:]
        if question in seen:
            continue
        seen.add(question)
        asked.append({"user": question, "assistant": answer, "type": kind, "template": f"{kind}/{index}",
                      "heldout_template": index == len(templates) - 1})
    return asked


# -----------------------------------------------------------------------------
# horizontal flip (training augmentation): mirror the words and the ground truth along with the image

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def flip_text_left_right(text: str) -> str:
    """Swap the words "left" and "right", keeping their case ("Left" -> "Right", "LEFT" -> "RIGHT")."""
    def swap(match):
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return _cap(other) if word[0].isupper() else other
    return _LEFT_RIGHT.sub(swap, text)


def flip_meta_left_right(meta: dict) -> dict:
    """A mirrored copy of a scene's meta: x -> 1 - x, boxes mirrored, left and right positions swapped."""
    meta = copy.deepcopy(meta)
    swap = {"left": "right", "right": "left"}
    for obj in meta.get("objects", []):
        if "x" in obj:
            obj["x"] = round(1.0 - obj["x"], 4)
        if "position" in obj:
            obj["position"] = swap.get(obj["position"], obj["position"])
        if "boxes" in obj:
            obj["boxes"] = [[round(1.0 - b[2], 4), b[1], round(1.0 - b[0], 4), b[3]] for b in obj["boxes"]]
    return meta


# -----------------------------------------------------------------------------
# the dataset

DEFAULT_QUESTIONS = (4, 6)      # VQA questions per scene: (fewest, most)
MAX_QUESTIONS = 2 * len(QUESTION_TEMPLATES)   # ask_questions asks each type at most twice


def count_range(value, low: int, high: int, name: str) -> tuple[int, int]:
    """"2" or "1-3" (or a (fewest, most) pair) -> (fewest, most), within low..high; else one ConfigError."""
    text = "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value).strip()
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    pair = (int(match[1]), int(match[2] or match[1])) if match else None
    if pair is None or not low <= pair[0] <= pair[1] <= high:
        raise ConfigError(f"{name} must be a number or a range like {low}-{high}, within {low}..{high}; got {text!r}")
    return pair


def make_scene_record(index: int, seed: int, style: str, image_size: int, id_digits: int = 6,
                      heldout_templates: bool = False, questions_range: tuple[int, int] = DEFAULT_QUESTIONS):
    """One record and its image. The text depends on (seed, index, style) only, not on the image size.
    heldout_templates: VQA questions may use the held-out wordings (test scenes only). questions_range: how many
    questions a VQA scene asks (a scene that allows fewer distinct questions asks fewer)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = random.Random(f"scenes/{seed}/{index}")   # str seeds hash with SHA-512: stable across runs and machines
    scene = plan_scene(rng)
    image = render_scene(scene, image_size)
    questions = []
    if style == "vqa":
        questions = ask_questions(scene, rng, n=rng.randint(*questions_range), heldout_templates=heldout_templates)
        texts = [{"user": q["user"], "assistant": q["assistant"]} for q in questions]
    else:
        texts = [{"user": DESCRIBE_PROMPT, "assistant": describe_scene(scene, style, rng)}]
    scene_id = f"scene-{index:0{id_digits}d}"
    meta = scene_meta(scene)
    meta["style"] = style
    if questions:   # what the vqa scorer reports by: type, wording, seen or held-out wording
        meta["questions"] = [{k: q[k] for k in ("type", "template", "heldout_template")} for q in questions]
    record = {"id": scene_id, "images": [f"images/{scene_id}.png"], "texts": texts, "meta": meta}
    return record, image


def make_scenes(out, n: int, style: str = "short", image_size: int = 64, seed: int = 0,
                fractions=(0.8, 0.1, 0.1), progress: bool = True, overwrite: bool = False,
                questions=None) -> dict:
    """Write the "scenes" dataset: `n` PNG pictures under out/images/ and out/records.jsonl.

    style: "short" (20-25 word descriptions), "long" (60-70 words) or "vqa" (question/answer pairs: `questions`
    per scene, "4-6" by default, up to 16: more questions share one picture's image tokens in training).
    Deterministic: the same arguments give byte-identical files. Splits come from `fractions` (train, val, test)
    by hashing each id. An existing dataset in `out` is only replaced with overwrite=True.
    Returns stats: n, style, image_size, seconds, images_per_s, splits, mean_words (descriptions only).
    """
    if style not in STYLES:
        raise ConfigError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    if n < 1:
        raise ConfigError(f"n (the number of scenes) must be >= 1, got {n}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        # below 16 px the objects are not recognisable; above 1024 px a scene only costs time and disk
        raise ConfigError(f"image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels, got {image_size}")
    if questions is not None and style != "vqa":
        raise ConfigError(f"questions is for style vqa; style {style} writes one description per scene")
    questions_range = DEFAULT_QUESTIONS if questions is None else count_range(questions, 1, MAX_QUESTIONS,
                                                                               "questions")
    out = Path(out)
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass overwrite=True "
                              "(--overwrite)")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("scene-*.png") if overwrite else ():
        old.unlink()   # a smaller rerun must not leave pictures from the larger one behind

    digits = max(6, len(str(n - 1)))
    records, splits, words = [], {"train": 0, "val": 0, "test": 0}, 0
    start = time.perf_counter()
    for index in progress_bar(range(n), desc=f"scenes ({style}, {image_size}px)", unit="img", enabled=progress):
        split = assign_split(f"scene-{index:0{digits}d}", seed, fractions)
        # held-out scenes (test) also ask in wordings that training never shows
        record, image = make_scene_record(index, seed, style, image_size, digits, heldout_templates=split == "test",
                                          questions_range=questions_range)
        image.save(out / record["images"][0], format="PNG")
        record["split"] = split
        splits[record["split"]] += 1
        words += sum(count_words(t["assistant"]) for t in record["texts"])
        records.append(record)
    write_records(out, records)
    seconds = time.perf_counter() - start
    return {"out": str(out), "n": n, "style": style, "image_size": image_size, "seed": seed,
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1), "splits": splits,
            "mean_words": round(words / n, 1) if style != "vqa" else None}
