"""The evaluation runner: registry, limits, batching, reports; plumbing checked with an oracle `complete` that
answers with the reference, and once end to end with a real (tiny, untrained) model."""
import json

import pytest

from nanovlm.config import ConfigError, from_name
from nanovlm.data.format import DatasetFormatError
from nanovlm.evaluate import SCORERS, Item, Scorer, available_scorers, evaluate, get_scorer, register_scorer, \
    write_report
from nanovlm.evaluate.runner import collect_items, format_markdown, join_answer, report_paths
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_model():
    tokenizer = Tokenizer.train(["I see a red ball on the left.", "Describe the picture."] * 20, vocab_size=300)
    model = VisionLanguageModel(tokenizer.configure(from_name("tiny"))).eval()
    model.tokenizer = tokenizer
    return model


@register_scorer
class FirstWordScorer(Scorer):
    """A toy task for these tests: the first word of the description."""
    name = "_first_word"
    max_new_tokens = 3

    def items(self, record):
        if record["id"].endswith("3"):
            return []   # a scorer may skip records
        words = record["texts"][0]["assistant"].split()
        return [Item(id=record["id"], images=record["images"], question="First word?", reference=words[0],
                     meta={"kind": "even" if int(record["id"][-1]) % 2 == 0 else "odd"})]

    def score(self, answer, item):
        return {"correct": answer.split()[:1] == [item.reference]}

    def summarize(self, scores, items):
        by_kind = {}
        for score, item in zip(scores, items):
            by_kind.setdefault(item.meta["kind"], []).append(score["correct"])
        return {"questions": len(scores), "accuracy": sum(s["correct"] for s in scores) / len(scores),
                "by_kind": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(by_kind.items())}}


@pytest.fixture
def oracle(monkeypatch):
    """`complete` answering every question with its item's reference (minus the given start); records the calls."""
    calls = []

    def complete(model, images, answer_starts, questions, max_new_tokens, batch_size):
        calls.append({"n": len(images), "max_new_tokens": max_new_tokens, "images": images})
        answers = model.answers[sum(c["n"] for c in calls[:-1]):][:len(images)]
        return [a[len(s):] for a, s in zip(answers, answer_starts)]

    monkeypatch.setattr("nanovlm.predict.complete", complete)
    return calls


class Oracle:
    tokenizer = Tokenizer.train(["I see a red ball."] * 5, vocab_size=280)

    def __init__(self, answers):
        self.answers = answers


def test_registry_finds_built_in_and_registered_scorers():
    names = available_scorers()
    assert {"grounding", "_first_word"} <= set(names)
    assert isinstance(get_scorer("grounding"), Scorer) and SCORERS["_first_word"] is FirstWordScorer
    with pytest.raises(ConfigError, match="unknown evaluation task 'nope'; choose from .*grounding"):
        get_scorer("nope")
    with pytest.raises(ValueError, match="needs a `name`"):
        register_scorer(type("Nameless", (Scorer,), {}))


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_limit_must_be_a_positive_whole_number(limit):
    with pytest.raises(ConfigError, match="limit must be a whole number >= 1"):
        collect_items(FirstWordScorer(), [], limit)


def test_runner_batches_limits_scores_and_groups(small_scenes, oracle):
    records = [json.loads(line) for line in (small_scenes / "records.jsonl").read_text().splitlines()]
    items = collect_items(FirstWordScorer(), [r for r in records if r.get("split") == "train"], limit=7)
    assert len(items) == 7 and not any(i.id.endswith("3") for i in items)

    answers = [i.reference for i in items]
    answers[1] = "Wrong"
    result = evaluate(Oracle(answers), small_scenes, "_first_word", split="train", limit=7, batch_size=3,
                      progress=False)
    assert [c["n"] for c in oracle] == [3, 3, 1] and oracle[0]["max_new_tokens"] == 3
    assert all(len(per_item) == 1 for c in oracle for per_item in c["images"])   # one list of images per question
    assert result["summary"]["questions"] == 7 and result["summary"]["accuracy"] == pytest.approx(6 / 7)
    assert [s["id"] for s in result["samples"]] == [i.id for i in items]
    assert result["samples"][1]["score"] == {"correct": False} and result["samples"][1]["answer"] == "Wrong"
    kinds = result["summary"]["by_kind"]
    assert sum(k["n"] for k in kinds.values()) == 7
    assert "| accuracy | 85.7% |" in result["table"] and "| by kind | n | accuracy |" in result["table"]
    # nothing to ask is an error naming the task
    with pytest.raises(DatasetFormatError, match="no val records that the '_first_word' task can score"):
        evaluate(Oracle([]), small_scenes, "_first_word", records=[r for r in records if r["id"].endswith("3")],
                 split="val", progress=False)


def test_grounding_on_the_runner_scores_reference_descriptions_perfectly(small_scenes, oracle):
    records = [json.loads(line) for line in (small_scenes / "records.jsonl").read_text().splitlines()]
    references = [r["texts"][0]["assistant"] for r in records]
    result = evaluate(Oracle(references), small_scenes, "grounding", split=None, records=records, batch_size=16,
                      progress=False)
    summary = result["summary"]
    assert summary["scenes"] == len(records) and summary["object_accuracy"] == 1.0 and summary["scene_accuracy"] == 1.0
    assert all(s["answer_start"] in ("I see", "I can see", "Look, I see", "In the picture, I see", "Wow, I see")
               for s in result["samples"])
    # the budget covers the longest reference (grounding sizes it from the references)
    longest = max(len(Oracle.tokenizer.encode(r)) for r in references)
    assert oracle[0]["max_new_tokens"] > longest
    assert "| hallucinations per scene | 0.00 |" in result["table"]


def test_reports_are_written_as_json_jsonl_and_markdown(small_scenes, oracle, tmp_path):
    records = [json.loads(line) for line in (small_scenes / "records.jsonl").read_text().splitlines()][:5]
    result = evaluate(Oracle([r["texts"][0]["assistant"] for r in records]), small_scenes, "grounding", records=records,
                      progress=False)
    paths = write_report(result, tmp_path / "out" / "grounding.json")
    assert paths == report_paths(tmp_path / "out" / "grounding")
    head = json.loads(paths["summary"].read_text())
    assert head["task"] == "grounding" and head["summary"]["scenes"] == 5 and "samples" not in head
    lines = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert [s["id"] for s in lines] == [r["id"] for r in records]
    assert paths["table"].read_text().startswith("# grounding on ")


def test_markdown_table_and_answer_joining():
    table = format_markdown({"n": 3, "accuracy": 0.5, "loss": 2.5, "missing": None,
                             "by_type": {"color": {"n": 2, "accuracy": 1.0}, "count": {"n": 1, "accuracy": 0.0}}})
    assert table.splitlines()[:6] == ["| metric | value |", "|---|---:|", "| n | 3 |", "| accuracy | 50.0% |",
                                      "| loss | 2.5 |", "| missing | n/a |"]
    assert "| color | 2 | 100.0% |" in table and "| count | 1 | 0.0% |" in table
    assert join_answer("I see", " a ball") == "I see a ball" and join_answer("I see", "a ball") == "I see a ball"
    assert join_answer("", "  yes ") == "yes" and join_answer("I see", "") == "I see"


def test_a_real_model_runs_through_the_runner(small_scenes, tiny_model):
    result = evaluate(tiny_model, small_scenes, "grounding", split="train", limit=3, batch_size=2, max_new_tokens=4,
                      progress=False)
    assert len(result["samples"]) == 3 and result["summary"]["scenes"] == 3
    assert all(isinstance(s["answer"], str) for s in result["samples"])
