"""The LLM judge through the real `openai` client and a local wire-format server: schema validation, one repair
request for malformed answers, transport retries, Table 3 for several models side by side, the grade cache."""
import json
import re

import pytest

from nanovlm.chat import ChatSettings, Usage, make_client
from nanovlm.config import from_name
from nanovlm.data.synth import make_scenes
from nanovlm.evaluate.judge import (CRITERIA, GradeFormatError, JudgeRun, grade_all, grade_one, grades_response_format,
                                    judge_models, parse_grades, table3_markdown, table3_row)
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer
from openai_server import FakeChatServer


def grades_json(grammar=7, **kw):
    obj = {"assessment": "The student finishes the sentence well.", "grammar": grammar, "creativity": 5,
           "consistency": 8, "meaningfulness": 6, "plot": 4, **kw}
    return json.dumps(obj)


def judge_reply(messages, model):
    """Grades from the completion itself, so each sample's grades can be checked: grammar = its word count % 11."""
    completion = re.search(r"\S\*\*\*(.*)\n", messages[0]["content"]).group(1)   # the prompt ends in a word
    return "Here is my grading:\n```json\n" + grades_json(grammar=len(completion.split()) % 11) + "\n```"


def settings(server, **kw):
    return ChatSettings(**{**dict(base_url=server.base_url, model="judge-model", concurrency=2, max_retries=3,
                                  timeout_s=0.5, backoff_s=0.01, backoff_max_s=0.02), **kw})


def test_parse_grades_validates_against_the_schema():
    assert parse_grades(grades_json())["grammar"] == 7
    assert parse_grades("Sure!\n```json\n" + grades_json() + "\n```")["plot"] == 4
    for bad, reason in [("no json here", "no JSON object"), ('{"assessment": "x", "grammar": 7', "no JSON object"),
                        ('{"assessment": "ok", "grammar": 7,}', "not valid"),
                        (grades_json(grammar=11), "grammar"), (grades_json(plot="4"), "plot"),
                        (grades_json(creativity=6.5), "creativity"), (grades_json(assessment=""), "assessment"),
                        (json.dumps({"assessment": "x", "grammar": 1}), "creativity")]:
        with pytest.raises(GradeFormatError, match=reason):
            parse_grades(bad)


def test_malformed_grades_get_one_repair_request(tmp_path):
    answers = iter([grades_json(grammar=12), grades_json(), "still not json", "nor this", grades_json()])
    with FakeChatServer(reply=lambda messages, model: next(answers)) as server:
        client, usage = make_client(settings(server)), Usage()
        first = grade_one(client, settings(server), "I see a", "red ball.", usage)
        assert first["repaired"] and first["total"] == 7 + 5 + 8 + 6 + 4
        repair = server.requests[1]["messages"]
        assert len(repair) == 3 and "grammar" in repair[2]["content"]
        assert "less than or equal to 10" in repair[2]["content"]   # the repair request says what was wrong
        second = grade_one(client, settings(server), "I see a", "red ball.", usage)
        assert second["error"].startswith("malformed after one repair") and second["raw"] == "nor this"
        assert len(server.requests) == 4   # one repair each, never more
        assert "error" not in grade_one(client, settings(server), "I see a", "red ball.", usage)


def test_the_grades_schema_can_be_sent_as_response_format():
    with FakeChatServer(reply=lambda messages, model: grades_json()) as server:
        fmt = grades_response_format()
        results, _ = grade_all([("I see a", "red ball.")], settings(server, response_format=fmt), progress=False)
        sent = server.requests[0]["response_format"]
    assert results[0]["total"] == 30 and sent["json_schema"]["schema"]["required"][0] == "assessment"
    assert set(sent["json_schema"]["schema"]["required"]) == {"assessment", *CRITERIA}


def test_transport_errors_are_retried_grades_keep_their_order_and_are_cached(tmp_path):
    pairs = [(f"I see number {i}", " ".join(["word"] * i)) for i in range(8)]
    cache = str(tmp_path / "grades.sqlite")
    with FakeChatServer(reply=judge_reply, slow_s=1.5) as server:
        server.faults.extend(["429", "500", "malformed", "slow"])
        results, usage = grade_all(pairs, settings(server), cache=cache, progress=False)
        again, _ = grade_all(pairs, settings(server), cache=cache, progress=False)
        assert len(server.requests) == 12 and again == results   # the rerun paid nothing
    assert [r["grammar"] for r in results] == [i % 11 for i in range(8)]
    assert usage.retries == 4 and usage.requests == 12
    row = table3_row(results + [{"error": "x"}])
    assert row["graded"] == 8 and row["failed"] == 1 and row["plot"] == 4
    assert row["total"] == pytest.approx(sum(row[c] for c in CRITERIA))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, n=30, style="short", image_size=32, seed=0, progress=False)
    return folder


def tiny_model(seed):
    import torch

    torch.manual_seed(seed)
    tokenizer = Tokenizer.train(["I see a red ball on the left.", "Describe the picture."] * 20, vocab_size=300)
    model = VisionLanguageModel(tokenizer.configure(from_name("tiny"))).eval()
    model.tokenizer = tokenizer
    return model


def test_table3_for_two_models_side_by_side(scenes, tmp_path):
    models = {"mini": tiny_model(0), "large": tiny_model(1)}
    with FakeChatServer(reply=judge_reply) as server:
        run = JudgeRun(data=str(scenes), limit=4, max_new_tokens=12, judge=settings(server))
        report = judge_models(models, run, progress=False)
        asked = len(server.requests)
        pairs = {(s["score"]["prompt"], s["score"]["completion"]) for r in report["results"].values()
                 for s in r["samples"]}
        assert asked == len(pairs) == 6   # 3 test scenes x 2 models, each pair graded once
        prompts = [r["messages"][0]["content"] for r in server.requests]
    assert all("***" in p and "grammar" in p for p in prompts)
    lines = report["table"].splitlines()
    assert lines[0].startswith("| model | grammar | creativity | consistency | meaningfulness | plot | total (/50)")
    assert lines[2].startswith("| mini |") and lines[3].startswith("| large |")
    for name, result in report["results"].items():
        for sample in result["samples"]:
            score = sample["score"]
            assert sample["answer"].startswith(score["prompt"]) and len(score["prompt"].split()) in (6, 7)
            assert score["grammar"] == len(score["completion"].split()) % 11
        assert report["rows"][name]["graded"] == 3
    assert table3_markdown({"x": table3_row([{"error": "e"}])}).splitlines()[2].startswith("| x | n/a")
