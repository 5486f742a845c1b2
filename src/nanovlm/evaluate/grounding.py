"""Objective scoring of scene descriptions against the ground truth in a record's meta.

A description is read back with regular expressions over the scenes' vocabulary (nanovlm.data.synth):
- a group is "<count> [size] <colour> <shape>" ("two red balls", "a big blue car", "the red ball");
  the first explicit count wins, "the ..." alone leaves the count unknown;
- a position phrase ("on the left", "in the middle", "at the top", "in the sky") or relation ("on the box",
  "next to the house") belongs to the one group named in the same clause (clauses end at , ; . ! ? and "and").
Positions are checked against the geometry (x, y of the group's centre), not against the generator's label, so
any correct wording scores. Ground-truth descriptions from the generator score 100%.
"""
from __future__ import annotations

import re

from ..data.synth import COLORS, NOUN_SYNONYMS, SHAPES, split_opening
from .runner import Item, Scorer, register_scorer

COUNT_OF = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
SIZE_OF = {"big": "big", "large": "big", "huge": "big", "small": "small", "little": "small", "tiny": "small"}
BACKGROUND_OF = {"grass": "grass", "sea": "sea", "water": "sea", "ocean": "sea", "sand": "sand", "beach": "sand",
                 "snow": "snow", "room": "room", "floor": "room", "road": "road", "street": "road"}
POSITION_OF = {"left": "left", "right": "right", "middle": "middle", "center": "middle", "centre": "middle",
               "top": "top", "bottom": "bottom", "sky": "top"}

# where a group's centre must be for a position word to be true (x, y are fractions, y grows downwards)
POSITION_TEST = {
    "left": lambda x, y: x < 0.4,
    "right": lambda x, y: x > 0.6,
    "middle": lambda x, y: 0.3 <= x <= 0.7,
    "top": lambda x, y: y < 0.4,
    "bottom": lambda x, y: y > 0.6,
}


def _noun_table() -> dict[str, str]:
    nouns = {}
    for shape in SHAPES.values():
        nouns[shape.name] = nouns[shape.plural] = shape.name
    for shape, pairs in NOUN_SYNONYMS.items():
        for singular, plural in pairs:
            nouns[singular] = nouns[plural] = shape
    return nouns


NOUN_OF = _noun_table()


def _alternatives(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))   # longest first: "boxes" before "box"


_COLOR, _NOUN, _SIZE = _alternatives(COLORS), _alternatives(NOUN_OF), _alternatives(SIZE_OF)
NOUN_PHRASE = re.compile(
    rf"\b(?P<det>the|a|an|one|two|three|four|five)(?:\s+(?P<number>one|two|three|four|five))?"
    rf"(?:\s+(?P<size>{_SIZE}))?\s+(?P<color>{_COLOR})\s+(?P<noun>{_NOUN})\b", re.IGNORECASE)
RELATION = re.compile(
    rf"\b(?P<rel>on top of|on|next to|beside|near)\s+(?:the|a|an)\s+(?:(?:{_SIZE})\s+)?"
    rf"(?:(?P<color>{_COLOR})\s+)?(?P<noun>{_NOUN})\b", re.IGNORECASE)
POSITION = re.compile(
    r"\b(?:on the (?P<side>left|right)(?: side)?|in the (?P<mid>middle|center|centre)|at the (?P<edge>top|bottom)"
    r"|in the (?P<sky>sky))\b", re.IGNORECASE)
BACKGROUND = re.compile(rf"\b(?:{_alternatives(BACKGROUND_OF)})\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;]+")
_CLAUSE_END = re.compile(r",|\band\b|\bbut\b", re.IGNORECASE)


# -----------------------------------------------------------------------------
# reading a description

def _read_clause(clause: str, groups: dict) -> tuple[list[tuple], list[str], list[tuple]]:
    """(subject group keys, positions, relations) stated in one clause; registers every group it names."""
    relation_matches = list(RELATION.finditer(clause))
    taken = [m.span() for m in relation_matches]
    subjects = []
    for m in NOUN_PHRASE.finditer(clause):
        if any(lo <= m.start() < hi for lo, hi in taken):
            continue
        det, number = m["det"].lower(), (m["number"] or "").lower()
        count = COUNT_OF.get(number) or (COUNT_OF.get(det) if det != "the" else None)
        size = SIZE_OF[m["size"].lower()] if m["size"] else None
        key = _register(groups, m["color"].lower(), NOUN_OF[m["noun"].lower()], count, size)
        if key not in subjects:
            subjects.append(key)
    relations = []
    for m in relation_matches:
        rel = "on" if m["rel"].lower() in ("on", "on top of") else "next to"
        relations.append((rel, NOUN_OF[m["noun"].lower()]))
        if m["color"]:   # "on the brown box" names a group; "on the box" only points at one
            _register(groups, m["color"].lower(), NOUN_OF[m["noun"].lower()], None, None)
    positions = [POSITION_OF[(m["side"] or m["mid"] or m["edge"] or m["sky"]).lower()]
                 for m in POSITION.finditer(clause)]
    return subjects, positions, relations


def _register(groups: dict, color: str, shape: str, count, size) -> tuple:
    key = (color, shape)
    group = groups.setdefault(key, {"shape": shape, "color": color, "count": None, "size": None,
                                    "positions": [], "relations": []})
    if group["count"] is None:   # the first explicit count is what the text claims
        group["count"] = count
    if group["size"] is None:
        group["size"] = size
    return key


def parse_description(text: str) -> list[dict]:
    """The object groups a description names, in order of first mention.

    Each is {"shape", "color", "count" (int, or None if never counted), "size" ("big"/"small"/None),
    "positions": ["left", "top", ...], "relations": [("on" | "next to", shape), ...]}.
    """
    groups = {}
    for sentence in _SENTENCE_END.split(text):
        clauses = [_read_clause(c, groups) for c in _CLAUSE_END.split(sentence)]
        for i, (subjects, positions, relations) in enumerate(clauses):
            if not positions and not relations:
                continue
            owner = subjects
            if not subjects:   # "On the left, there is a ball": a bare place belongs to the next (or last) subject
                later = [c[0] for c in clauses[i + 1:] if c[0]]
                earlier = [c[0] for c in clauses[:i] if c[0]]
                owner = later[0] if later else (earlier[-1] if earlier else [])
            if len(owner) == 1:   # with two subjects in one clause the place is ambiguous: ignore it
                groups[owner[0]]["positions"] += positions
                groups[owner[0]]["relations"] += relations
    return list(groups.values())


def parse_background(text: str) -> set[str]:
    """The backgrounds a description names ("grass", "sea", "sand", "snow", "room", "road")."""
    return {BACKGROUND_OF[m.group(0).lower()] for m in BACKGROUND.finditer(text)}


# -----------------------------------------------------------------------------
# scoring one description

def _match(truth: list[dict], said: list[dict]) -> dict[int, int]:
    """Pair ground-truth groups with named groups, best agreement first (shape counts most, then colour)."""
    pairs = []
    for i, t in enumerate(truth):
        for j, s in enumerate(said):
            same_shape, same_color = s["shape"] == t["shape"], s["color"] == t["color"]
            if same_shape or same_color:
                pairs.append((4 * same_shape + 2 * same_color + (s["count"] == t["count"]), -i, -j))
    matched, used = {}, set()
    for _, i, j in sorted(pairs, reverse=True):
        if -i not in matched and -j not in used:
            matched[-i] = -j
            used.add(-j)
    return matched


def _relation_true(relation: str, shape: str, obj: dict, truth: list[dict]) -> bool:
    others = [o for o in truth if o is not obj and o["shape"] == shape]
    if relation == "on":
        return any(abs(o["x"] - obj["x"]) < 0.15 and obj["y"] < o["y"] for o in others)
    return any(abs(o["x"] - obj["x"]) < 0.6 and abs(o["y"] - obj["y"]) < 0.4 for o in others)


def _position_correct(said: dict, obj: dict, truth: list[dict]):
    """True if every stated place fits the picture, None if the text states none."""
    if not said["positions"] and not said["relations"]:
        return None
    return (all(POSITION_TEST[p](obj["x"], obj["y"]) for p in said["positions"])
            and all(_relation_true(rel, shape, obj, truth) for rel, shape in said["relations"]))


def score_description(text: str, meta: dict) -> dict:
    """Score one description against meta {"background", "objects": [{"shape", "color", "count", "x", "y", ...}]}.

    Returns {"objects": [per ground-truth group: mentioned, color/shape/count correct, size/position correct or
    None where the text does not say, correct = colour and shape and count], "hallucinated": [named groups with no
    ground-truth match], "background_correct": bool or None, "scene_correct": all objects correct and nothing
    hallucinated}.
    """
    said = parse_description(text)
    truth = meta["objects"]
    matched = _match(truth, said)
    objects = []
    for i, obj in enumerate(truth):
        s = said[matched[i]] if i in matched else None
        result = {"shape": obj["shape"], "color": obj["color"], "count": obj["count"], "mentioned": s is not None,
                  "shape_correct": bool(s and s["shape"] == obj["shape"]),
                  "color_correct": bool(s and s["color"] == obj["color"]),
                  "count_correct": bool(s and s["count"] == obj["count"]),
                  "size_correct": None if not s or s["size"] is None else s["size"] == obj.get("size"),
                  "position_correct": _position_correct(s, obj, truth) if s else None,
                  "said": s}
        result["correct"] = result["shape_correct"] and result["color_correct"] and result["count_correct"]
        objects.append(result)
    hallucinated = [s for j, s in enumerate(said) if j not in matched.values()]
    backgrounds = parse_background(text)
    background_correct = None if not backgrounds or "background" not in meta else backgrounds == {meta["background"]}
    return {"objects": objects, "hallucinated": hallucinated, "background_correct": background_correct,
            "scene_correct": all(o["correct"] for o in objects) and not hallucinated}


# -----------------------------------------------------------------------------
# many descriptions

def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(scores: list[dict]) -> dict:
    """Aggregate score_description results.

    Per-attribute accuracies are over all ground-truth groups (an unnamed group counts as wrong), except
    size/position/background, which are over the groups (scenes) whose text states them; *_stated gives how often.
    object_accuracy: groups with colour AND shape AND count right. scene_accuracy: every group right and nothing
    hallucinated.
    """
    objects = [o for s in scores for o in s["objects"]]
    return {
        "scenes": len(scores),
        "objects": len(objects),
        "mentioned": _mean([o["mentioned"] for o in objects]),
        "color_accuracy": _mean([o["color_correct"] for o in objects]),
        "shape_accuracy": _mean([o["shape_correct"] for o in objects]),
        "count_accuracy": _mean([o["count_correct"] for o in objects]),
        "size_accuracy": _mean([o["size_correct"] for o in objects]),
        "size_stated": _mean([o["size_correct"] is not None for o in objects]),
        "position_accuracy": _mean([o["position_correct"] for o in objects]),
        "position_stated": _mean([o["position_correct"] is not None for o in objects]),
        "background_accuracy": _mean([s["background_correct"] for s in scores]),
        "object_accuracy": _mean([o["correct"] for o in objects]),
        "scene_accuracy": _mean([s["scene_correct"] for s in scores]),
        "hallucinations_per_scene": _mean([len(s["hallucinated"]) for s in scores]),
    }


def format_table(summary: dict) -> str:
    """A two-column text table of a summarize() result; rates as percentages, "n/a" where nothing was stated."""
    rows = []
    for key, value in summary.items():
        label = key.replace("_", " ")
        if value is None:
            shown = "n/a"
        elif key in ("scenes", "objects"):
            shown = str(value)
        elif key == "hallucinations_per_scene":
            shown = f"{value:.2f}"
        else:
            shown = f"{100 * value:.1f}%"
        rows.append((label, shown))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {shown:>7}" for label, shown in rows)


# -----------------------------------------------------------------------------
# the task for the evaluation runner: `nanovlm eval grounding`

def prompt_words(description: str, fallback_words: int = 3) -> str:
    """The opening the model is given: the scene generator's generic opening phrase (it names no attribute, not
    even a count, so "I see" and not "I see a"), or the first few words of any other description."""
    try:
        return split_opening(description)[0]
    except ValueError:
        return " ".join(description.split()[:fallback_words])


@register_scorer
class GroundingScorer(Scorer):
    """The paper's task, scored objectively: each held-out scene's description is started with its opening words,
    the model writes the rest, and the colours, shapes, counts and positions it names are checked against meta."""
    name = "grounding"
    headline = "object_accuracy"
    description = ("complete held-out scene descriptions from their first words and score the colours, shapes, "
                   "counts and positions they name against the ground truth")

    def items(self, record: dict) -> list[Item]:
        if not record.get("meta", {}).get("objects") or not record["images"]:
            return []
        turn = record["texts"][0]
        return [Item(id=record["id"], images=record["images"][:1], question=turn["user"],
                     answer_start=prompt_words(turn["assistant"]), reference=turn["assistant"],
                     meta=record["meta"])]

    def new_tokens(self, items: list[Item], tokenizer) -> int:
        # room for the longest reference description, plus slack
        return int(max(len(tokenizer.encode(i.reference)) for i in items) * 1.3) + 8

    def score(self, answer: str, item: Item) -> dict:
        return score_description(answer, item.meta)

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        return summarize(scores)

    def no_items_hint(self) -> str:
        return "Grounding needs records with meta.objects: make the data with `nanovlm data scenes`"

    def format_value(self, key: str, value) -> str:
        if key == "hallucinations_per_scene" and value is not None:
            return f"{value:.2f}"
        return super().format_value(key, value)
