import random
import re

import pytest

from nanovlm.data.synth import (NOUN_SYNONYMS, SHAPES, describe_scene, flip_meta_left_right, flip_text_left_right,
                                plan_scene, scene_meta)
from nanovlm.evaluate.grounding import format_table, parse_description, score_description, summarize

ATTRIBUTES = ("color_accuracy", "shape_accuracy", "count_accuracy", "object_accuracy", "scene_accuracy")


def generated(style, n, seed=0):
    """(description, meta) pairs straight from the generator."""
    rng = random.Random(f"grounding/{seed}")
    pairs = []
    for i in range(n):
        scene = plan_scene(random.Random(f"grounding/{seed}/{i}"))
        pairs.append((describe_scene(scene, style, rng), scene_meta(scene)))
    return pairs


def nouns(shape):
    forms = [shape, SHAPES[shape].plural] + [w for pair in NOUN_SYNONYMS.get(shape, ()) for w in pair]
    return "|".join(sorted(forms, key=len, reverse=True))


def named(group):
    """Regex for the group's colour + noun as the text names it ("red balls", "black kitty")."""
    return re.compile(rf"\b{group['color']}(\s+)({nouns(group['shape'])})\b", re.IGNORECASE)


META = {"background": "grass", "objects": [
    {"shape": "ball", "color": "red", "size": "big", "count": 2, "position": "left", "x": 0.2, "y": 0.75},
    {"shape": "box", "color": "brown", "size": "small", "count": 1, "position": "right", "x": 0.8, "y": 0.8},
    {"shape": "cat", "color": "black", "size": "small", "count": 1, "position": "right", "on": "box",
     "x": 0.81, "y": 0.6},
    {"shape": "sun", "color": "yellow", "size": "big", "count": 1, "position": "top", "x": 0.5, "y": 0.15}]}
GOOD = ("Look, I see two big red balls on the left and a little black kitty on the brown box. On the right there is "
        "a brown box. A yellow sun shines in the sky. The red balls are round. Everything is on the green grass.")


@pytest.mark.parametrize("style", ["short", "long"])
def test_ground_truth_descriptions_score_perfectly(style):
    scores = [score_description(text, meta) for text, meta in generated(style, 300)]
    summary = summarize(scores)
    for key in ATTRIBUTES + ("mentioned", "position_accuracy", "size_accuracy", "background_accuracy"):
        assert summary[key] == 1.0, (key, summary)
    assert summary["hallucinations_per_scene"] == 0
    assert summary["position_stated"] > (0.99 if style == "long" else 0.85)
    assert summary["objects"] > 600


def test_parse_reads_counts_sizes_colours_shapes_places_and_relations():
    groups = parse_description(GOOD)
    assert [(g["color"], g["shape"], g["count"], g["size"]) for g in groups] == [
        ("red", "ball", 2, "big"), ("black", "cat", 1, "small"), ("brown", "box", 1, None),
        ("yellow", "sun", 1, None)]
    assert groups[0]["positions"] == ["left"]
    assert groups[1]["relations"] == [("on", "box")] and groups[1]["positions"] == []
    assert groups[2]["positions"] == ["right"]
    assert groups[3]["positions"] == ["top"]


@pytest.mark.parametrize("text, expected", [
    ("I see an orange sun.", ("orange", "sun", 1)),
    ("I see one white boat.", ("white", "boat", 1)),
    ("I see three pink puppies.", ("pink", "dog", 3)),
    ("I see five green boxes.", ("green", "box", 5)),
    ("I see the two blue cars.", ("blue", "car", 2)),
    ("I like the blue cars.", ("blue", "car", None)),            # "the" alone does not count
    ("The purple house is big. I see a purple house.", ("purple", "house", 1)),   # a later count still counts
])
def test_parse_counts(text, expected):
    [group] = parse_description(text)
    assert (group["color"], group["shape"], group["count"]) == expected


def test_first_count_wins_and_places_need_one_subject():
    [ball] = parse_description("I see two red balls. Then I see three red balls on the left.")
    assert ball["count"] == 2 and ball["positions"] == ["left"]
    groups = parse_description("A red ball and a blue car on the left. A red box, on the right.")
    by_shape = {g["shape"]: g for g in groups}
    assert by_shape["ball"]["positions"] == [] and by_shape["car"]["positions"] == ["left"]
    assert by_shape["box"]["positions"] == ["right"]   # a bare place after a comma joins its clause's subject
    [ball] = parse_description("On the left, there is a red ball.")
    assert ball["positions"] == ["left"]
    assert parse_description("I see a big ball and the sky is blue.") == []   # no colour + shape, no group


def test_hand_written_scene_scores():
    score = score_description(GOOD, META)
    assert score["scene_correct"] and score["background_correct"] and not score["hallucinated"]
    assert all(o["position_correct"] for o in score["objects"])
    assert [o["size_correct"] for o in score["objects"]] == [True, None, True, None]

    wrong = GOOD.replace("on the brown box", "next to the brown box").replace("on the left", "on the right")
    objects = score_description(wrong, META)["objects"]
    assert objects[0]["position_correct"] is False   # the balls are at x = 0.2
    assert objects[2]["position_correct"] is True    # the cat is next to the box as well as on it
    assert score_description(GOOD.replace("grass", "snow"), META)["background_correct"] is False
    cat_on_sun = GOOD.replace("kitty on the brown box", "kitty on the sun")
    assert score_description(cat_on_sun, META)["objects"][2]["position_correct"] is False


def corrupt_and_score(style, corrupt, n=120):
    """Apply `corrupt(text, meta, rng) -> text` to generated descriptions; return the clean and corrupt summaries."""
    rng = random.Random(5)
    clean, dirty = [], []
    for text, meta in generated(style, n, seed=1):
        clean.append(score_description(text, meta))
        dirty.append(score_description(corrupt(text, meta, rng), meta))
    return summarize(clean), summarize(dirty)


def swap_colour(text, meta, rng):
    group = rng.choice(meta["objects"])
    unused = [c for c in SHAPES[group["shape"]].colors if all(c != o["color"] for o in meta["objects"])]
    return named(group).sub(rf"{rng.choice(unused)}\1\2", text)


def change_count(text, meta, rng):
    group = rng.choice(meta["objects"])
    mention = re.compile(rf"\b(a|an|one|two|three)(\s+(?:big|large|small|little)\s+|\s+)(?={group['color']}\s+"
                         rf"(?:{nouns(group['shape'])})\b)", re.IGNORECASE)
    new = "four" if group["count"] < 4 else "one"
    return mention.sub(rf"{new}\2", text, count=1)


def drop_object(text, meta, rng):
    return named(rng.choice(meta["objects"])).sub(r"thing", text)


def add_object(text, meta, rng):
    present = {o["shape"] for o in meta["objects"]}
    shape = rng.choice([s for s in SHAPES if s not in present])
    return text + f" I also see two {rng.choice(SHAPES[shape].colors)} {SHAPES[shape].plural}."


@pytest.mark.parametrize("style", ["short", "long"])
@pytest.mark.parametrize("corrupt, hurt, unhurt", [
    (swap_colour, ["color_accuracy", "object_accuracy", "scene_accuracy"],
     ["shape_accuracy", "count_accuracy", "mentioned", "hallucinations_per_scene"]),
    (change_count, ["count_accuracy", "object_accuracy", "scene_accuracy"],
     ["color_accuracy", "shape_accuracy", "hallucinations_per_scene"]),
    (drop_object, ["mentioned", "color_accuracy", "shape_accuracy", "count_accuracy", "object_accuracy",
                   "scene_accuracy"], ["hallucinations_per_scene"]),
    (add_object, ["scene_accuracy"], ["color_accuracy", "shape_accuracy", "count_accuracy", "object_accuracy"]),
])
def test_corruptions_lower_the_right_scores(style, corrupt, hurt, unhurt):
    clean, dirty = corrupt_and_score(style, corrupt)
    for key in hurt:
        assert dirty[key] < clean[key] - 0.1 or dirty[key] < 0.9 * clean[key], (key, dirty[key])
    for key in unhurt:
        assert dirty[key] == clean[key], (key, dirty[key])
    if corrupt is add_object:
        assert dirty["hallucinations_per_scene"] == 1.0 and dirty["scene_accuracy"] == 0.0
    if corrupt in (swap_colour, change_count, drop_object):
        assert dirty["scene_accuracy"] == 0.0   # exactly one object is wrong in every scene


def test_flipping_text_and_meta_together_keeps_the_score_and_alone_breaks_positions():
    pairs = generated("long", 150, seed=2)
    both = summarize([score_description(flip_text_left_right(t), flip_meta_left_right(m)) for t, m in pairs])
    text_only = summarize([score_description(flip_text_left_right(t), m) for t, m in pairs])
    assert all(both[key] == 1.0 for key in ATTRIBUTES + ("position_accuracy",))
    assert text_only["object_accuracy"] == 1.0 and text_only["position_accuracy"] < 0.8


def test_summary_and_table():
    scores = [score_description(GOOD, META), score_description("I see two red balls.", META)]
    summary = summarize(scores)
    assert summary["scenes"] == 2 and summary["objects"] == 8
    assert summary["object_accuracy"] == pytest.approx(5 / 8)   # 4 + the balls of the second text
    assert summary["scene_accuracy"] == 0.5
    table = format_table(summary)
    assert "object accuracy" in table and "62.5%" in table and "scene accuracy" in table
    assert "n/a" in format_table(summarize([score_description("Nothing here.", META)]))
