"""The `vqa` scorer: VQA answer normalisation, multi-reference accuracy, per-type and per-wording summaries."""
import pytest

from nanovlm.evaluate import get_scorer
from nanovlm.evaluate.vqa import normalize_answer, vqa_accuracy


@pytest.mark.parametrize("answer, reference", [
    ("Two.", "2"), ("two", "2"), ("TWO", "two"), ("zero", "0"), ("none", "0"),
    ("The ball", "ball"), ("a red ball!", "red ball"), ("Yes.", "yes"), ("  yes \n", "yes"),
    ("on the left", "on left"), ("2,000", "2000"), ("3.5", "3.5"), ("t-shirt", "t shirt"),
    ("don't know", "dont know"), ("What?", "what"), ("an apple", "apple"),
])
def test_normalisation_equal(answer, reference):
    assert normalize_answer(answer) == normalize_answer(reference)
    assert vqa_accuracy(answer, reference) == 1.0


@pytest.mark.parametrize("answer, reference", [
    ("2", "3"), ("yes", "no"), ("red ball", "ball"), ("left", "on the left"), ("3.5", "35"), ("", "yes"),
    ("ball and", "ball"), ("blue", "blues"),
])
def test_normalisation_different(answer, reference):
    assert vqa_accuracy(answer, reference) == 0.0


def test_only_the_first_line_counts_and_human_answers_give_vqa_accuracy():
    assert vqa_accuracy("yes\nbecause it is red", "yes") == 1.0
    humans = ["2", "2", "two", "3", "2", "2", "three", "2", "2", "2"]
    assert vqa_accuracy("2", humans) == 1.0                      # >= 3 humans agree
    assert vqa_accuracy("three", humans) == pytest.approx(2 / 3)
    assert vqa_accuracy("4", humans) == 0.0


def test_scorer_items_types_and_summary():
    scorer = get_scorer("vqa")
    record = {"id": "r1", "images": ["a.png"], "texts": [
        {"user": "What color is the ball?", "assistant": "red"},
        {"user": "How many cars?", "assistant": "two"},
        {"user": "Tell me the color of the car.", "assistant": "blue"}],
        "meta": {"questions": [{"type": "color", "heldout_template": False}, {"type": "count", "heldout_template": False},
                               {"type": "color", "heldout_template": True}]}}
    items = scorer.items(record)
    assert [i.id for i in items] == ["r1#0", "r1#1", "r1#2"] and all(i.images == ["a.png"] for i in items)
    assert [i.meta["type"] for i in items] == ["color", "count", "color"]
    scores = [scorer.score(a, i) for a, i in zip(["Red.", "2", "green"], items)]
    assert [s["accuracy"] for s in scores] == [1.0, 1.0, 0.0]
    summary = scorer.summarize(scores, items)
    assert summary["questions"] == 3 and summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["by_type"] == {"color": {"n": 2, "accuracy": 0.5}, "count": {"n": 1, "accuracy": 1.0}}
    assert summary["by_wording"] == {"held-out wording": {"n": 1, "accuracy": 0.0},
                                     "seen wording": {"n": 2, "accuracy": 1.0}}


def test_records_without_types_and_with_human_answers():
    scorer = get_scorer("vqa")
    plain = scorer.items({"id": "p", "images": [], "texts": [{"user": "Q?", "assistant": "yes"}]})
    assert plain[0].meta == {} and scorer.summarize([{"accuracy": 1.0}], plain) == {"questions": 1, "accuracy": 1.0}
    typed = scorer.items({"id": "v", "images": ["x.jpg"], "texts": [{"user": "How many?", "assistant": "2"}],
                          "meta": {"question_type": "how many", "questions": [{"answers": ["2", "2", "3"]}]}})
    assert typed[0].meta["type"] == "how many" and typed[0].reference == ["2", "2", "3"]
    assert scorer.score("two", typed[0])["accuracy"] == pytest.approx(2 / 3)


def test_multi_image_and_text_only_questions_run_on_a_real_model(tmp_path):
    """Cauldron-style records (two images, none) go through the runner and `complete` on a tiny model."""
    from PIL import Image

    from nanovlm.config import from_name
    from nanovlm.data.format import write_records
    from nanovlm.evaluate import evaluate
    from nanovlm.model.vlm import VisionLanguageModel
    from nanovlm.tokenizer import Tokenizer

    (tmp_path / "images").mkdir()
    for name, size in (("a", (40, 30)), ("b", (20, 50))):
        Image.new("RGB", size, "red").save(tmp_path / "images" / f"{name}.png")
    write_records(tmp_path, [
        {"id": "two", "images": ["images/a.png", "images/b.png"], "split": "test",
         "texts": [{"user": "Which is taller?", "assistant": "the second"}, {"user": "Colour?", "assistant": "red"}]},
        {"id": "none", "images": [], "split": "test", "texts": [{"user": "Say yes.", "assistant": "yes"}]},
        {"id": "one", "images": ["images/a.png"], "split": "test", "texts": [{"user": "Colour?", "assistant": "red"}]},
    ])
    tokenizer = Tokenizer.train(["Which is taller? the second Colour? red Say yes. yes"] * 5, vocab_size=280)
    model = VisionLanguageModel(tokenizer.configure(from_name("tiny", {"max_images": 2}))).eval()
    model.tokenizer = tokenizer
    result = evaluate(model, tmp_path, "vqa", batch_size=4, progress=False)
    assert [s["id"] for s in result["samples"]] == ["two#0", "two#1", "none#0", "one#0"]
    assert result["summary"]["questions"] == 4 and [len(s["images"]) for s in result["samples"]] == [2, 2, 0, 1]
