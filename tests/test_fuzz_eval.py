"""`nanovlm eval TASK`, `nanovlm data cauldron` and `nanovlm data mmstar` through the CLI: a run end to end, and
every bad input exits 2 with exactly one `error:` line, no traceback, nothing of the user's replaced."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.config import from_name
from nanovlm.data.synth import make_scenes
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer

from cli_helpers import assert_user_error, run_cli

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    make_scenes(root / "vqa", n=40, style="vqa", image_size=16, seed=0, progress=False)
    texts = [t[k] for r in map(json.loads, (root / "vqa" / "records.jsonl").read_text().splitlines())
             for t in r["texts"] for k in ("user", "assistant")]
    tokenizer = Tokenizer.train(texts, vocab_size=300)
    cfg = tokenizer.configure(from_name("tiny").with_overrides({"vision.image_size": 16}))
    VisionLanguageModel(cfg).save_pretrained(root / "model", tokenizer=tokenizer)
    (root / "parquet").mkdir()
    return root


def test_eval_vqa_end_to_end_with_json_and_report(workspace, capsys, tmp_path):
    code, out, err = run_cli(capsys, "eval", "vqa", "--model", workspace / "model", "--data", workspace / "vqa",
                             "--limit", 7, "--batch-size", 3, "--json", "--report", tmp_path / "r" / "vqa.json")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "vqa" and result["split"] == "test" and result["summary"]["questions"] == 7
    assert 0.0 <= result["summary"]["accuracy"] <= 1.0 and result["summary"]["by_type"]
    assert len((tmp_path / "r" / "vqa.jsonl").read_text().splitlines()) == 7
    code, out, err = run_cli(capsys, "eval", "vqa", "--model", workspace / "model", "--data", workspace / "vqa",
                             "--limit", 2, "--split", "train")
    assert code == 0, err
    assert "| accuracy |" in out and (workspace / "model" / "vqa_train.md").is_file()   # report beside the model


def test_every_task_in_the_registry_has_a_command(capsys):
    from nanovlm.evaluate import available_scorers

    code, out, _ = run_cli(capsys, "eval", "--help")
    assert code == 0
    for name in available_scorers():
        if not name.startswith("_"):
            assert name in out


@FUZZ
@given(flag=st.sampled_from(["--limit", "--batch-size", "--max-new-tokens"]),
       value=st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["", "abc", "1.5", "1e3", "two", "0x10"])))
def test_eval_rejects_bad_numbers(workspace, capsys, flag, value):
    code, _, err = run_cli(capsys, "eval", "vqa", "--model", workspace / "model", "--data", workspace / "vqa",
                           flag, value)
    assert_user_error(code, err, flag)


@pytest.mark.parametrize("case, fragment", [
    (["eval", "nope", "--model", "M", "--data", "D"], "invalid choice: 'nope'"),
    (["eval", "vqa", "--model", "{root}/model", "--data", "{root}/missing"], "dataset folder not found"),
    (["eval", "vqa", "--model", "{root}/no_model", "--data", "{root}/vqa"], "no_model"),
    (["eval", "vqa", "--model", "{root}/model", "--data", "{root}/parquet"], "records.jsonl"),
    (["eval", "mmstar", "--model", "{root}/model", "--data", "{root}/vqa"], "no test records that the 'mmstar' task"),
    (["eval", "vqa", "--model", "{root}/model", "--data", "{root}/vqa", "--split", "dev"], "invalid choice"),
    (["eval", "vqa", "--model", "{root}/model", "--data", "{root}/vqa", "--device", "tpu"], "tpu"),
    (["data", "cauldron", "--parquet", "{root}/nothing.parquet", "--out", "{root}/c1"], "no such parquet file"),
    (["data", "cauldron", "--parquet", "{root}/parquet", "--out", "{root}/c2"], "no .parquet files"),
    (["data", "cauldron", "--parquet", "{root}/vqa/records.jsonl", "--out", "{root}/c3"], "not a readable parquet"),
    (["data", "cauldron", "--parquet", "HuggingFaceM4/the_cauldron:ai2d", "--out", "{root}/c4"], "Hugging Face Hub"),
    (["data", "cauldron", "--parquet", "{root}/parquet", "--out", "{root}/c5", "--val-fraction", "1.5"],
     "--val-fraction"),
    (["data", "cauldron", "--parquet", "{root}/parquet", "--out", "{root}/vqa"], "--overwrite"),
    (["data", "mmstar", "--parquet", "{root}/vqa/records.jsonl", "--out", "{root}/m1"], "not a readable parquet"),
    (["data", "mmstar", "--parquet", "{root}/parquet", "--out", "{root}/vqa"], "--overwrite"),
    (["data", "mmstar", "--out", "{root}/m2"], "--parquet"),
])
def test_bad_inputs_are_one_line_errors(workspace, capsys, case, fragment):
    before = (workspace / "vqa" / "records.jsonl").read_bytes()
    code, _, err = run_cli(capsys, *[a.format(root=workspace) for a in case])
    assert_user_error(code, err, fragment)
    assert (workspace / "vqa" / "records.jsonl").read_bytes() == before   # the user's dataset untouched
