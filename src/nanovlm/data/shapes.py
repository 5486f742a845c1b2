"""The `shapes` diagnostic: single-colour shapes on a plain background, where only FORM tells what a thing is.

In the scenes, every shape word can be guessed from colour and place (the sun is yellow and at the top, a tree
has a brown trunk), so a model that sees only colour statistics still scores well there. Here:
- a shape is a geometric figure (circle, ellipse, square, ...) or one of the scenes' sprites drawn as a
  single-colour silhouette (cat, dog, house, ...), filled with ONE colour, no outline, no inner detail;
- colour, size, position and rotation are drawn independently of the shape (uniform over their ranges), so none
  of them says which shape it is;
- some colour-shape combinations are held out (`heldout_combinations`): training and validation pictures never
  show them, test pictures do (half of the test pictures show one), and every question about such an object is
  marked `heldout_combo` so the `shapes` scorer reports it apart.

Questions (short answers, scored by `nanovlm eval shapes`): the shape of the <colour> thing, the colour of the
<shape>, how many things there are, and whether one thing is left of / above another. Within one picture colours
are distinct and shapes are distinct, so every reference names one object. A record never asks both the shape
and the colour of the same object: the second answer could be copied from the first question's words.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

from ..config import ConfigError
from ..progress import progress as progress_bar
from .format import RECORDS_FILE, assign_split, write_records
from .synth import COLORS, DRAWERS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, NUMBER_WORDS, SHAPES, _Pen, count_range

# Geometric figures (drawn here) and the scenes' sprites as silhouettes (drawn by synth.DRAWERS). Not the ball
# (a circle once filled in) nor the box (a hexagon).
GEOMETRIC = ("circle", "ellipse", "square", "rectangle", "triangle", "star", "cross", "hexagon")
SILHOUETTES = ("house", "tree", "sun", "car", "cat", "dog", "flower", "boat")
ALL_SHAPES = GEOMETRIC + SILHOUETTES
SHAPE_SETS = {"all": ALL_SHAPES, "geometric": GEOMETRIC, "silhouettes": SILHOUETTES}
ALL_COLORS = tuple(COLORS)
PER_THING = ("one", "both", "apart")  # about each thing: its shape or its colour; both; both, in two conversations
PLURALS = {"cross": "crosses", "sun": "suns"}

MIN_RADIUS, MAX_RADIUS = 0.11, 0.20   # a shape's bounding circle, as a fraction of the image side
SILHOUETTE_TILT = 30.0                 # degrees: a cat upside down is a puzzle, not a cat
MAX_OBJECTS = 3
RELATION_MARGIN = 0.12                 # left/above is asked only when the centres are this far apart

QUESTION_TEMPLATES = {
    "shape": ("What shape is the {color} thing?", "What is the {color} thing?", "Which shape is {color}?"),
    "color": ("What color is the {shape}?", "Which color is the {shape}?", "What is the color of the {shape}?"),
    "count": ("How many things are there?", "How many things can you see?", "How many shapes are in the picture?"),
    "relation": ("Is the {a} {relation} the {b}?",),
}
RELATIONS = {"left": "left of", "above": "above"}
ATTRIBUTES = tuple(QUESTION_TEMPLATES)


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def check_shapes(shapes) -> tuple[str, ...]:
    """A shape set name ("all", "geometric", "silhouettes") or a list of shape names -> the tuple of names."""
    if isinstance(shapes, str):
        if shapes in SHAPE_SETS:
            return SHAPE_SETS[shapes]
        shapes = [s.strip() for s in shapes.split(",") if s.strip()]
    shapes = tuple(dict.fromkeys(shapes))
    unknown = [s for s in shapes if s not in ALL_SHAPES]
    if unknown or len(shapes) < 2:
        raise ConfigError(f"shapes must be one of {', '.join(SHAPE_SETS)} or at least two of "
                          f"{', '.join(ALL_SHAPES)}; got {', '.join(unknown) or shapes}")
    return shapes


def check_objects(objects) -> tuple[int, int]:
    """"2" or "1-3" (or a (fewest, most) pair) -> (fewest, most), within 1..MAX_OBJECTS."""
    return count_range(objects, 1, MAX_OBJECTS, "objects")


def check_question_kinds(questions) -> tuple[str, ...]:
    """"all" or a comma-separated subset of the question kinds -> the tuple of kinds."""
    if isinstance(questions, str):
        questions = ATTRIBUTES if questions.strip() == "all" else [q.strip() for q in questions.split(",") if q.strip()]
    kinds = tuple(dict.fromkeys(questions))
    unknown = [q for q in kinds if q not in ATTRIBUTES]
    if unknown or not kinds:
        raise ConfigError(f"questions must be all or a comma-separated list of {', '.join(ATTRIBUTES)}; "
                          f"got {', '.join(unknown) or 'nothing'}")
    return kinds


def heldout_combinations(shapes) -> set[tuple[str, str]]:
    """(shape, colour) pairs never drawn in train/val pictures: one colour per shape, spread over the colours
    (the k-th shape of ALL_SHAPES loses colour 3k + 1 mod 10), so every colour and every shape is still seen in
    training, only not together. Fixed, not seeded: the same pairs in every dataset."""
    return {(s, ALL_COLORS[(3 * ALL_SHAPES.index(s) + 1) % len(ALL_COLORS)]) for s in shapes}


# -----------------------------------------------------------------------------
# planning (fractions of the image side; resolution independent)

def plan_shapes(rng: random.Random, shapes=ALL_SHAPES, n_objects: int | None = None, heldout: bool = False,
                colors=ALL_COLORS, objects_range: tuple[int, int] = (1, MAX_OBJECTS)) -> dict:
    """One picture: {"background": rgb, "objects": [{"shape", "color", "x", "y", "radius", "angle", "aspect",
    "heldout_combo"}]}. Colours and shapes are distinct within a picture; objects do not overlap.
    heldout=False never uses a held-out colour-shape pair; heldout=True (test pictures) gives the first object a
    held-out pair half of the time and lets the others take any colour. objects_range: (fewest, most) objects
    when n_objects is not given."""
    held = heldout_combinations(shapes)
    n = n_objects or rng.randint(*objects_range)
    kinds = rng.sample(list(shapes), n)
    objects, used_colors = [], set()
    force = heldout and rng.random() < 0.5
    for k, shape in enumerate(kinds):
        allowed = [c for c in colors if c not in used_colors and (heldout or (shape, c) not in held)]
        if force and k == 0:
            allowed = [c for c in allowed if (shape, c) in held] or allowed
        color = rng.choice(allowed)
        used_colors.add(color)
        objects.append({"shape": shape, "color": color, "heldout_combo": (shape, color) in held})
    placed = []
    for obj in objects:
        for _ in range(200):   # rejection sampling: uniform position and size, no overlap
            r = rng.uniform(MIN_RADIUS, MAX_RADIUS)
            x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
            if all(math.hypot(x - o["x"], y - o["y"]) > r + o["radius"] + 0.01 for o in placed):
                break
        else:
            continue   # no room left (rare with 3 objects): the picture has fewer objects
        tilt = SILHOUETTE_TILT if obj["shape"] in SILHOUETTES else 180.0
        obj.update(x=round(x, 4), y=round(y, 4), radius=round(r, 4), angle=round(rng.uniform(-tilt, tilt), 2),
                   aspect=round(rng.uniform(0.45, 0.6), 3), mirror=rng.random() < 0.5)
        placed.append(obj)
    gray = rng.randint(105, 150)
    background = tuple(max(0, min(255, gray + rng.randint(-6, 6))) for _ in range(3))
    return {"background": background, "objects": placed}


# -----------------------------------------------------------------------------
# drawing: each object is a white mask drawn upright, rotated, then filled with its colour

def _regular(n: int, radius: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _outline_points(shape: str, aspect: float) -> list[tuple[float, float]] | None:
    """The figure's polygon in units of its bounding radius (centre 0, 0), or None for round figures."""
    if shape == "square":
        h = 1 / math.sqrt(2)
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "rectangle":
        w = 1 / math.sqrt(1 + aspect ** 2)
        return [(-w, -w * aspect), (w, -w * aspect), (w, w * aspect), (-w, w * aspect)]
    if shape == "triangle":
        return _regular(3, 1.0)
    if shape == "hexagon":
        return _regular(6, 1.0)
    if shape == "star":
        outer, inner = _regular(5, 1.0), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = 0.95, 0.3
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
                (-b, -b)]
    return None


def _draw_mask(obj: dict, side: int) -> Image.Image:
    """The object's mask (mode L) on a square of side `side` pixels = its bounding circle's diameter."""
    r = side / 2
    shape = obj["shape"]
    if shape in SILHOUETTES:
        sprite = Image.new("RGB", (side, side))          # black: whatever the sprite paints is the silhouette
        spec = SHAPES[shape]
        s = 1.8 * r / max(spec.width, spec.height)       # the sprite fits the bounding circle at any tilt
        pen = _Pen(ImageDraw.Draw(sprite), r, r + spec.height * s / 2, s, -1 if obj["mirror"] else 1)
        DRAWERS[shape](pen, (255, 255, 255))
        mask = sprite.convert("L").point(lambda v: 255 if v else 0)
    else:
        mask = Image.new("L", (side, side))
        d = ImageDraw.Draw(mask)
        points = _outline_points(shape, obj["aspect"])
        if points:
            d.polygon([(r + u * r, r + v * r) for u, v in points], fill=255)
        else:
            ry = r * (obj["aspect"] if shape == "ellipse" else 1.0)
            d.ellipse((0, r - ry, side, r + ry), fill=255)
    return mask.rotate(obj["angle"], resample=Image.NEAREST)


def render_shapes(picture: dict, image_size: int) -> Image.Image:
    """Draw a planned picture as an RGB image of image_size x image_size pixels (supersampled, then shrunk)."""
    supersample = max(2, -(-256 // image_size))
    side = image_size * supersample
    image = Image.new("RGB", (side, side), tuple(picture["background"]))
    for obj in picture["objects"]:
        diameter = max(2, round(2 * obj["radius"] * side))
        mask = _draw_mask(obj, diameter)
        left, top = round(obj["x"] * side - diameter / 2), round(obj["y"] * side - diameter / 2)
        image.paste(COLORS[obj["color"]], (left, top, left + diameter, top + diameter), mask)
    return image.reduce(supersample)


# -----------------------------------------------------------------------------
# questions

def _relation_question(a: dict, b: dict, rng: random.Random) -> dict | None:
    """Is a left of / above b? Only when they are clearly apart that way; yes and no equally likely."""
    kinds = [k for k, key in (("left", "x"), ("above", "y")) if abs(a[key] - b[key]) > RELATION_MARGIN]
    if not kinds:
        return None
    kind = rng.choice(kinds)
    key = "x" if kind == "left" else "y"
    first, second = (a, b) if a[key] < b[key] else (b, a)      # first IS left of / above second
    answer = rng.choice(("yes", "no"))
    if answer == "no":
        first, second = second, first

    def ref(o):   # by colour or by shape, at random: a relation question must not teach either alone
        return f"{o['color']} thing" if rng.random() < 0.5 else o["shape"]
    question = QUESTION_TEMPLATES["relation"][0].format(a=ref(first), b=ref(second), relation=RELATIONS[kind])
    return {"user": question, "assistant": answer, "type": "relation",
            "heldout_combo": first["heldout_combo"] or second["heldout_combo"]}


def ask_shapes_questions(picture: dict, rng: random.Random, kinds=ATTRIBUTES, per_thing: str = "one") -> list[dict]:
    """Per object one question, its shape or its colour (per_thing="one"), or both (per_thing="both"); a count
    question, and a relation question when there are two or more objects; in random order; only those whose type
    is in `kinds` are kept (the draws are the same whatever is kept). Each: {"user", "assistant", "type",
    "heldout_combo"}.

    Why "both": with one question per thing, a one-thing picture's shape and colour are never targets of the
    same training step, and a from-scratch encoder then learns colour but not form (README, fifth round).
    Its cost: a thing's second question is answered by its first ("What is the purple thing?" names the answer
    of "What colour is the tree?"), so the decoder can copy instead of look (README, seventh round)."""
    objects = picture["objects"]
    questions = []
    for obj in objects:
        drawn = rng.choice(("shape", "color"))      # drawn in both modes, so "both" keeps every later draw of "one"
        for kind in (drawn,) if per_thing == "one" else ("shape", "color"):      # "apart" asks as "both"
            template = rng.choice(QUESTION_TEMPLATES[kind])
            answer = obj["shape"] if kind == "shape" else obj["color"]
            questions.append({"user": template.format(color=obj["color"], shape=obj["shape"]), "assistant": answer,
                              "type": kind, "heldout_combo": obj["heldout_combo"]})
    questions.append({"user": rng.choice(QUESTION_TEMPLATES["count"]), "assistant": NUMBER_WORDS[len(objects)],
                      "type": "count", "heldout_combo": any(o["heldout_combo"] for o in objects)})
    if len(objects) >= 2:
        a, b = rng.sample(objects, 2)
        relation = _relation_question(a, b, rng)
        if relation:
            questions.append(relation)
    rng.shuffle(questions)
    return [q for q in questions if q["type"] in kinds]


# -----------------------------------------------------------------------------
# the dataset

def conversations_apart(questions: list[dict]) -> list[list[dict]]:
    """per_thing="apart": every thing's shape and colour asked, as with "both", but in two conversations about the
    same picture, so that no answer is named by an earlier turn: each thing's colour (asked by its shape) and the
    count, in the order drawn; then each thing's shape (asked by its colour), in the order drawn, and the relation
    last (it names things by either attribute). With "both", half the answers can be copied from the conversation
    instead of read from the picture (docs/form.md, twelfth round)."""
    colours = [q for q in questions if q["type"] in ("color", "count")]
    shapes = [q for q in questions if q["type"] == "shape"] + [q for q in questions if q["type"] == "relation"]
    return [c for c in (colours, shapes) if c]


def make_shapes_records(index: int, seed: int, image_size: int, shapes=ALL_SHAPES, heldout: bool = False,
                        id_digits: int = 6, objects: tuple[int, int] = (1, MAX_OBJECTS),
                        kinds=ATTRIBUTES, per_thing: str = "one") -> tuple[list[dict], Image.Image]:
    """A picture's records (one; two with per_thing="apart", ids ending in -a and -b; without their split) and
    the picture; depends only on the arguments. A picture left without a question of the asked kinds (a relation
    is not asked when the centres are too close) is drawn again."""
    for attempt in range(100):
        rng = random.Random(f"shapes/{seed}/{index}" + (f"/{attempt}" if attempt else ""))
        picture = plan_shapes(rng, shapes, heldout=heldout, objects_range=objects)
        questions = ask_shapes_questions(picture, rng, kinds, per_thing)
        if questions:
            break
    else:
        raise ConfigError(f"no picture with a question of the kinds {', '.join(kinds)} in 100 draws")
    image = render_shapes(picture, image_size)
    picture_id = f"shapes-{index:0{id_digits}d}"
    objects_meta = [{k: o[k] for k in ("shape", "color", "x", "y", "radius", "angle", "heldout_combo")}
                    for o in picture["objects"]]
    conversations = conversations_apart(questions) if per_thing == "apart" else [questions]
    records = []
    for number, conversation in enumerate(conversations):
        meta = {"style": "shapes", "background": list(picture["background"]), "objects": objects_meta,
                "questions": [{"type": q["type"], "heldout_combo": q["heldout_combo"]} for q in conversation]}
        records.append({"id": picture_id + (f"-{'ab'[number]}" if per_thing == "apart" else ""),
                        "images": [f"images/{picture_id}.png"],
                        "texts": [{"user": q["user"], "assistant": q["assistant"]} for q in conversation],
                        "meta": meta})
    return records, image


def make_shapes(out, n: int, image_size: int = 64, seed: int = 0, shapes="all", fractions=(0.8, 0.1, 0.1),
                progress: bool = True, overwrite: bool = False, objects="1-3", questions="all",
                per_thing: str = "one") -> dict:
    """Write the shapes dataset: `n` PNG pictures under out/images/ and out/records.jsonl (train/val/test by a
    hash of the id; only test pictures show held-out colour-shape pairs). Same arguments, same bytes.
    objects ("1-3", "1", "2-3"): how many things a picture shows; questions ("all" or e.g. "shape,color"): the
    kinds asked. Together they isolate one skill, e.g. objects="1", questions="shape" is plain shape naming,
    objects="2-3", questions="color" is binding (finding a thing by its shape to report its colour).
    per_thing: "one" question per thing (its shape or its colour), "both" (ask_shapes_questions says why) or
    "apart" (both, in two conversations: conversations_apart says why); n counts pictures, not records."""
    shapes = check_shapes(shapes)
    objects, questions = check_objects(objects), check_question_kinds(questions)
    if per_thing not in PER_THING:
        raise ConfigError(f"per_thing must be one of {', '.join(PER_THING)}, got {per_thing!r}")
    if questions == ("relation",) and objects[1] < 2:
        raise ConfigError("relation questions need pictures of at least two things (e.g. --objects 2-3)")
    if n < 1:
        raise ConfigError(f"n (the number of pictures) must be >= 1, got {n}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels, got {image_size}")
    out = Path(out)
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass --overwrite")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("shapes-*.png") if overwrite else ():
        old.unlink()
    digits = max(6, len(str(n - 1)))
    records, splits = [], {"train": 0, "val": 0, "test": 0}
    start = time.perf_counter()
    for index in progress_bar(range(n), desc=f"shapes ({image_size}px)", unit="img", enabled=progress):
        split = assign_split(f"shapes-{index:0{digits}d}", seed, fractions)
        pictures_records, image = make_shapes_records(index, seed, image_size, shapes, heldout=split == "test",
                                                      id_digits=digits, objects=objects, kinds=questions,
                                                      per_thing=per_thing)
        image.save(out / pictures_records[0]["images"][0], format="PNG")
        for record in pictures_records:
            record["split"] = split
        splits[split] += 1
        records += pictures_records
    write_records(out, records)
    seconds = time.perf_counter() - start
    return {"out": str(out), "n": n, "image_size": image_size, "seed": seed, "shapes": list(shapes),
            "objects": list(objects), "questions": list(questions), "per_thing": per_thing,
            "heldout_combinations": sorted(f"{c} {s}" for s, c in heldout_combinations(shapes)),
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1), "splits": splits}
