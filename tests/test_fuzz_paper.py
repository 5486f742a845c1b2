"""`nanovlm data describe | eval judge | eval rouge | paper` under bad input: exit 2 with exactly one `error:`
line, no traceback, nothing a user made changed; and each command once on good input, through the CLI."""
from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.config import from_name
from nanovlm.data.format import read_records
from nanovlm.data.synth import make_scenes
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer
from openai_server import FakeChatServer
from test_describe import GOOD_SHORT
from test_fuzz_cli import assert_clean, run_cli, tree_digest

UNREACHABLE = "http://127.0.0.1:9/v1"   # the discard port: nothing listens, connections are refused at once
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, n=20, style="short", image_size=32, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = Tokenizer.train(["I see a red ball on the left.", "Describe the picture."] * 20, vocab_size=300)
    model = VisionLanguageModel(tokenizer.configure(from_name("tiny"))).eval()
    model.tokenizer = tokenizer
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return folder


def grades(messages, model):
    return json.dumps({"assessment": "ok", "grammar": 5, "creativity": 5, "consistency": 5, "meaningfulness": 5,
                       "plot": 5})


# -----------------------------------------------------------------------------
# good input, through the CLI

def test_describe_judge_and_rouge_through_the_cli(scenes, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer(reply=lambda messages, model: GOOD_SHORT.format(n=1)) as server:
        code, out, err = run_cli(capsys, "data", "describe", "--data", scenes, "--out", tmp_path / "desc",
                                 "--base-url", server.base_url, "--model", "m", "--quiet", "--price", "1,2")
        assert code == 0 and "described 20 of 20 records" in out and "$" in out, err
    assert len(read_records(tmp_path / "desc")) == 20
    other = tmp_path / "other" / "model"
    shutil.copytree(model_dir, other)
    with FakeChatServer(reply=grades) as server:
        code, out, err = run_cli(capsys, "eval", "judge", "--model", model_dir, "--model", other, "--data",
                                 scenes, "--judge-base-url", server.base_url, "--judge-model", "j", "--limit", "2",
                                 "--max-new-tokens", "4", "--report", tmp_path / "t3")
        assert code == 0, err
    assert "| 5.00 | 5.00 | 5.00 | 5.00 | 5.00 | 25.00 | 2 | 0 |" in (tmp_path / "t3.md").read_text()
    assert len(json.loads((tmp_path / "t3.json").read_text())["rows"]) == 2   # two models side by side
    code, out, err = run_cli(capsys, "eval", "rouge", "--model", model_dir, "--data", scenes, "--limit", "2",
                             "--max-new-tokens", "4", "--report", tmp_path / "rouge", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["samples"] == 2 and (tmp_path / "rouge.png").is_file()


# -----------------------------------------------------------------------------
# bad input

def describe_args(scenes, out, *extra):
    return ("data", "describe", "--data", scenes, "--out", out, "--base-url", UNREACHABLE, "--max-retries", "0",
            "--quiet", *extra)


@pytest.mark.parametrize("extra, message", [
    (("--concurrency", "0"), "concurrency"), (("--timeout", "-1"), "timeout"), (("--temperature", "3"), "temperature"),
    (("--max-rare-share", "2"), "max_rare_share"), (("--limit", "0"), "limit"), (("--common-words", "5"), "common"),
    (("--price", "a,b"), "--price"), (("--price=-1,2",), "negative"), (("--style", "medium"), "--style"),
    (("--words", "40,20"), "MIN <= MAX"), (("--words", "x"), "MIN,MAX"),
    (("--model", ""), "model"), ((), "cannot reach"),
])
def test_describe_bad_settings(scenes, tmp_path, capsys, extra, message):
    code, out, err = run_cli(capsys, *describe_args(scenes, tmp_path / "out", *extra))
    assert_clean(code, err, allowed=(2,))
    assert message in err


def test_describe_bad_folders_and_no_overwrite(scenes, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(capsys, *describe_args(tmp_path / "missing", tmp_path / "out"))
    assert_clean(code, err, allowed=(2,))
    assert "not found" in err
    code, _, err = run_cli(capsys, *describe_args(scenes, scenes))
    assert_clean(code, err, allowed=(2,))
    assert "input folder" in err
    done = tmp_path / "done"
    done.mkdir()
    (done / "records.jsonl").write_text("{}\n")
    before = tree_digest(done)
    code, _, err = run_cli(capsys, *describe_args(scenes, done))
    assert_clean(code, err, allowed=(2,))
    assert "--overwrite" in err and tree_digest(done) == before
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)   # OpenAI itself needs a key
    code, _, err = run_cli(capsys, "data", "describe", "--data", scenes, "--out", tmp_path / "o2")
    assert_clean(code, err, allowed=(2,))
    assert "OPENAI_API_KEY" in err


def test_describe_refused_by_the_server(scenes, tmp_path, capsys):
    with FakeChatServer() as server:
        server.faults.append("401")
        code, _, err = run_cli(capsys, "data", "describe", "--data", scenes, "--out", tmp_path / "out",
                               "--base-url", server.base_url, "--concurrency", "1", "--quiet")
    assert_clean(code, err, allowed=(2,))
    assert "AuthenticationError" in err and not (tmp_path / "out" / "records.jsonl").exists()


@given(flag=st.sampled_from(["--concurrency", "--max-retries", "--timeout", "--temperature", "--limit",
                             "--common-words", "--max-rare-share", "--quality-attempts"]),
       value=st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                       st.text(max_size=8)))
@FUZZ
def test_describe_numeric_flags_fuzzed(scenes, tmp_path_factory, capsys, flag, value):
    out = tmp_path_factory.mktemp("fuzz")
    code, _, err = run_cli(capsys, *describe_args(scenes, out, flag, value))
    assert_clean(code, err, allowed=(2,))   # valid values reach the unreachable endpoint: exit 2 as well
    assert not (out / "records.jsonl").exists()


def test_judge_and_rouge_bad_input(scenes, model_dir, tmp_path, capsys):
    cases = [
        (("eval", "judge", "--model", tmp_path / "nope", "--data", scenes, "--judge-base-url", UNREACHABLE),
         "not found"),
        (("eval", "judge", "--model", model_dir, "--data", tmp_path / "nope", "--judge-base-url", UNREACHABLE),
         "not found"),
        (("eval", "judge", "--model", model_dir, "--data", scenes, "--judge-base-url", UNREACHABLE,
          "--max-retries", "0", "--max-new-tokens", "2", "--limit", "1"), "cannot reach"),
        (("eval", "judge", "--model", model_dir, "--model", model_dir, "--data", scenes), "given twice"),
        (("eval", "rouge", "--model", model_dir, "--data", tmp_path / "nope"), "not found"),
        (("eval", "rouge", "--model", tmp_path / "nope", "--data", scenes), "not found"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert_clean(code, err, allowed=(2,))
        assert message in err, (argv, err)
    (tmp_path / "t3.md").write_text("mine")
    code, _, err = run_cli(capsys, "eval", "judge", "--model", model_dir, "--data", scenes, "--report",
                           tmp_path / "t3", "--judge-base-url", UNREACHABLE)
    assert_clean(code, err, allowed=(2,))
    assert "--overwrite" in err and (tmp_path / "t3.md").read_text() == "mine"
    test_only = tmp_path / "test_only"   # nothing in the train split to compare with
    make_scenes(test_only, n=3, style="short", image_size=32, seed=0, progress=False, fractions=(0.0, 0.0, 1.0))
    code, _, err = run_cli(capsys, "eval", "rouge", "--model", model_dir, "--data", test_only)
    assert_clean(code, err, allowed=(2,))
    assert "training description" in err


@pytest.mark.parametrize("extra, message", [
    (("--budget", "hours"), "budget"), (("--sizes", "mini,mini"), "distinct"), (("--sizes", "huge"), "huge"),
    (("--set", "foo=1"), "foo"), (("--set", "steps=many"), "steps"), (("--image-tokens", "all"), "image_tokens"),
    (("--minutes", "0"), "minutes"), (("--minutes", "nan"), "minutes"), (("--data", "/nonexistent/x"), "not found"),
])
def test_paper_bad_settings(tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, "paper", "--out", tmp_path / "p", "--quiet", *extra)
    assert_clean(code, err, allowed=(2,))
    assert message in err
    assert not (tmp_path / "p" / "mini").exists()   # failed before any training


def test_paper_judge_without_a_key_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, _, err = run_cli(capsys, "paper", "--out", tmp_path / "p", "--judge-model", "gpt-4o")
    assert_clean(code, err, allowed=(2,))
    assert "OPENAI_API_KEY" in err and not (tmp_path / "p").exists()


def test_paper_never_replaces_a_size_trained_with_other_settings(scenes, tmp_path, capsys):
    out = tmp_path / "p"
    (out / "mini" / "best").mkdir(parents=True)
    (out / "mini" / "sweep_row.json").write_text(json.dumps(
        {"settings": {"size": "mini", "lr": 0.5}, "row": {"model": str(out / "mini" / "best"), "steps": 9}}))
    before = tree_digest(out)
    code, _, err = run_cli(capsys, "paper", "--out", out, "--data", scenes, "--sizes", "tiny,mini", "--budget", "steps",
                           "--steps", "2", "--quiet")
    assert_clean(code, err, allowed=(2,))
    assert "other settings" in err and "--overwrite" in err and tree_digest(out) == before
    assert not (out / "tiny").exists()   # refused before the first size trained


@pytest.mark.parametrize("report", ["{not json", json.dumps({"sizes": {"mini": {}}})])
def test_paper_never_rewrites_a_report_it_cannot_keep_whole(scenes, tmp_path, capsys, report):
    out = tmp_path / "p"
    out.mkdir()
    (out / "report.json").write_text(report)   # unreadable, or showing a size this run would not keep
    code, _, err = run_cli(capsys, "paper", "--out", out, "--data", scenes, "--sizes", "tiny", "--budget", "steps",
                           "--steps", "2", "--quiet")
    assert_clean(code, err, allowed=(2,))
    assert "report.json already exists" in err and "--overwrite" in err
    assert (out / "report.json").read_text() == report and not (out / "tiny").exists()
