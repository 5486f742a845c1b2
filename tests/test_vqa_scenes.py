"""Scenes VQA as a task: every answer re-derived from the ground truth by reading the question back, held-out
wordings only on test scenes, every type asked, yes/no balanced, and the vqa scorer on the runner."""
import collections
import json
import random
import re

import pytest

from nanovlm.data.format import read_records
from nanovlm.data.synth import (NUMBER_WORDS, QUESTION_TEMPLATES, QUESTION_TYPES, SHAPES, ask_questions,
                                make_scenes, plan_scene)
from nanovlm.evaluate import evaluate

PLURAL_OF = {SHAPES[s].plural: s for s in SHAPES}
WORD = {0: "zero", **NUMBER_WORDS}


def template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template[:1].upper() + template[1:])
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: rf"(?P<{m[1]}>[\w ]+?)", pattern)
    return re.compile(pattern + "$")


def shape_of(noun: str) -> str:
    return noun if noun in SHAPES else PLURAL_OF[noun]


def expected_answer(kind: str, slots: dict, scene: dict) -> str:
    """The answer computed from the scene's ground truth, independently of the generator."""
    groups = scene["groups"]
    by_shape = {g["shape"]: g for g in groups}
    if kind == "color":
        return by_shape[shape_of(slots["noun"])]["color"]
    if kind == "shape":
        [g] = [g for g in groups if g["color"] == slots["color"]]
        return g["shape"]
    if kind == "count":
        g = by_shape.get(shape_of(slots["plural"]))
        return WORD[g["count"] if g else 0]
    if kind == "count_color":
        return WORD[sum(g["count"] for g in groups if g["color"] == slots["color"])]
    if kind == "position":
        g = by_shape[shape_of(slots["noun"])]
        return f"on the {g['on']}" if "on" in g else {"top": "sky"}.get(g["position"], g["position"])
    if kind == "object_at":
        place = slots["place"]
        if place.startswith("on the") and place[7:] in SHAPES:
            [g] = [g for g in groups if g.get("on") == place[7:]]
            return g["shape"]
        position = {"on the left": "left", "on the right": "right", "in the middle": "middle", "in the sky": "top"}
        [g] = [g for g in groups if g["position"] == position[place]]   # the only thing there
        return g["shape"] if g["count"] == 1 else SHAPES[g["shape"]].plural
    if kind == "exist":
        words = slots["thing"].split()[1:]
        color, shape = (words if len(words) == 2 else (None, words[0]))
        return "yes" if any(g["shape"] == shape and color in (None, g["color"]) for g in groups) else "no"
    if kind == "compare":
        count = {g["shape"]: g["count"] for g in groups}
        first, second = shape_of(slots["first"]), shape_of(slots["second"])
        assert count.get(first, 0) != count.get(second, 0)
        return "yes" if count.get(first, 0) > count.get(second, 0) else "no"
    raise AssertionError(kind)


def test_every_answer_follows_from_the_ground_truth_and_every_type_is_asked():
    kinds, answers = collections.Counter(), collections.Counter()
    for i in range(300):
        scene = plan_scene(random.Random(f"vqa-test/{i}"))
        questions = ask_questions(scene, random.Random(i), n=6, heldout_templates=True)
        assert len(questions) == 6 and len({q["user"] for q in questions}) == 6
        for q in questions:
            kind, index = q["template"].split("/")
            assert kind == q["type"] and q["heldout_template"] == (int(index) == len(QUESTION_TEMPLATES[kind]) - 1)
            match = template_regex(QUESTION_TEMPLATES[kind][int(index)]).match(q["user"])
            assert match, (q["user"], q["template"])
            assert q["assistant"] == expected_answer(kind, match.groupdict(), scene), q
            kinds[kind] += 1
            if kind in ("exist", "compare"):
                answers[kind, q["assistant"]] += 1
    assert set(kinds) == set(QUESTION_TYPES) and min(kinds.values()) > 150
    for kind in ("exist", "compare"):
        assert 0.4 < answers[kind, "yes"] / (answers[kind, "yes"] + answers[kind, "no"]) < 0.6


def test_held_out_wordings_appear_only_in_test_scenes(tmp_path):
    make_scenes(tmp_path, 120, style="vqa", image_size=16, seed=1, progress=False)
    heldout = collections.Counter()
    for record in read_records(tmp_path):
        questions = record["meta"]["questions"]
        assert len(questions) == len(record["texts"])
        for turn, info in zip(record["texts"], questions):
            kind, index = info["template"].split("/")
            assert template_regex(QUESTION_TEMPLATES[kind][int(index)]).match(turn["user"])
            heldout[record["split"], info["heldout_template"]] += 1
    assert heldout["train", True] == heldout["val", True] == 0
    assert heldout["test", True] > 0 and heldout["train", False] > 300


def test_vqa_scorer_on_scenes_reports_every_type_and_both_wordings(tmp_path, monkeypatch):
    make_scenes(tmp_path, 120, style="vqa", image_size=16, seed=1, progress=False)
    records = read_records(tmp_path, split="test")
    references = [t["assistant"] for r in records for t in r["texts"]]
    answers = list(references)
    answers[0] = "purple elephant"   # one wrong answer

    def oracle(model, images, answer_starts, questions, max_new_tokens, batch_size):
        done = len(oracle.seen)
        oracle.seen += questions
        return [a.upper() + "." for a in answers[done:done + len(questions)]]   # case and punctuation are ignored
    oracle.seen = []
    monkeypatch.setattr("nanovlm.predict.complete", oracle)

    class Model:
        from nanovlm.tokenizer import Tokenizer
        tokenizer = Tokenizer.train(references, vocab_size=300)

    result = evaluate(Model(), tmp_path, "vqa", progress=False)
    summary = result["summary"]
    assert summary["questions"] == len(references)
    assert summary["accuracy"] == pytest.approx(1 - 1 / len(references))
    assert set(summary["by_type"]) <= set(QUESTION_TYPES) and len(summary["by_type"]) >= 6
    assert set(summary["by_wording"]) == {"seen wording", "held-out wording"}
    assert json.dumps(summary)   # plain JSON for the report


def test_held_out_wordings_use_only_words_the_training_wordings_teach():
    def words(template):
        return set(re.sub(r"\{\w+\}", " ", template).lower().replace("?", " ").replace(",", " ")
                   .replace(".", " ").split())

    taught = set().union(*(words(t) for templates in QUESTION_TEMPLATES.values() for t in templates[:-1]))
    for kind, templates in QUESTION_TEMPLATES.items():
        assert words(templates[-1]) <= taught, (kind, words(templates[-1]) - taught)
        assert templates[-1] not in templates[:-1]


def test_held_out_frames_are_taught_with_other_types_only():
    """Each held-out wording puts a known question in a frame the training wordings use for OTHER types."""
    opening = "In the picture, "
    for kind, templates in QUESTION_TEMPLATES.items():
        taught = [t for t in templates[:-1] if t.startswith(opening)]
        assert bool(taught) == (kind != "position"), kind
    assert QUESTION_TEMPLATES["position"][-1].startswith(opening)
    subject_first = {kind for kind, templates in QUESTION_TEMPLATES.items()
                     if any(t.startswith(("The ", "There are how many")) for t in templates[:-1])}
    assert subject_first == {"shape", "count", "count_color", "position"}
    assert QUESTION_TEMPLATES["color"][-1].startswith("The ")


def test_more_questions_per_scene_when_asked_and_the_default_is_unchanged(tmp_path):
    """--questions 10-12: every scene asks 10-12 distinct questions (a scene allowing fewer asks fewer), every
    type among them; the default is 4-6, drawn exactly as questions="4-6"."""
    make_scenes(tmp_path / "many", 60, style="vqa", image_size=16, seed=1, progress=False, questions="10-12")
    many = read_records(tmp_path / "many")
    counts = [len(r["texts"]) for r in many]
    assert max(counts) <= 12 and sum(c >= 10 for c in counts) >= 0.9 * len(counts)
    assert all(len({t["user"] for t in r["texts"]}) == len(r["texts"]) for r in many)
    assert {q["type"] for r in many for q in r["meta"]["questions"]} == set(QUESTION_TYPES)
    make_scenes(tmp_path / "default", 60, style="vqa", image_size=16, seed=1, progress=False)
    make_scenes(tmp_path / "explicit", 60, style="vqa", image_size=16, seed=1, progress=False, questions="4-6")
    default = (tmp_path / "default" / "records.jsonl").read_bytes()
    assert default == (tmp_path / "explicit" / "records.jsonl").read_bytes()
    assert all(4 <= len(r["texts"]) <= 6 for r in read_records(tmp_path / "default"))
