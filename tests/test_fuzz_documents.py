"""`nanovlm data documents` and `nanovlm extract` under bad input: every case exits 2 with exactly one `error:`
line and no traceback, and never touches an existing dataset without --overwrite."""
from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer

from conftest import tiny_config
from test_fuzz_cli import assert_clean, run_cli, tree_digest

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    from nanovlm import cli
    assert cli.main(["data", "documents", "--out", str(folder), "--n", "2", "--quiet"]) == 0
    return folder


@pytest.mark.parametrize("args, message", [
    (["--kind", "passport"], "unknown kind 'passport'"),
    (["--kind", ""], "unknown kind ''"),
    (["--style", "fields,essay"], "unknown style 'essay'"),
    (["--layouts", "table,"], "unknown layout ''"),
    (["--n", "0"], "n must be"),
    (["--n", "many"], "invalid int value"),
    (["--width", "10"], "page size"),
    (["--height", "99999"], "page size"),
    (["--scan", "2"], "scan strength"),
    (["--scan", "nan"], "scan strength"),
    (["--split", "holdout"], "invalid choice"),
])
def test_bad_documents_arguments(capsys, tmp_path, args, message):
    code, out, err = run_cli(capsys, "data", "documents", "--out", tmp_path / "d", "--n", "2", "--quiet", *args)
    assert code == 2 and message in err, err
    assert_clean(code, err)
    assert not (tmp_path / "d").exists()


def test_existing_dataset_is_kept_without_overwrite(capsys, dataset):
    before = tree_digest(dataset)
    code, out, err = run_cli(capsys, "data", "documents", "--out", dataset, "--n", "3", "--quiet")
    assert code == 2 and "--overwrite" in err
    assert_clean(code, err)
    assert tree_digest(dataset) == before


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, out, err = run_cli(capsys, "data", "documents", "--out", tmp_path / "f", "--n", "1", "--quiet")
    assert code == 2
    assert_clean(code, err)


@FUZZ
@given(kind=st.text(string.ascii_lowercase + ",", max_size=12), style=st.text(string.ascii_lowercase + ",", max_size=10),
       n=st.integers(-3, 2), width=st.integers(-10, 5000))
def test_random_documents_arguments(capsys, tmp_path_factory, kind, style, n, width):
    out = tmp_path_factory.mktemp("fuzz") / "d"
    code, _, err = run_cli(capsys, "data", "documents", "--out", out, "--kind", kind, "--style", style, "--n", n,
                           "--width", width, "--quiet")
    assert_clean(code, err)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tokenizer = Tokenizer.train(['{"name": "Ravi", "pan": "ABCPS1234F"}', "Extract as JSON: name, pan"] * 20,
                                vocab_size=300)
    VisionLanguageModel(tokenizer.configure(tiny_config())).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.mark.parametrize("fields", ["", "Name", "name,,pan", "name,name", "a b"])
def test_extract_bad_fields(capsys, model_dir, dataset, fields):
    code, out, err = run_cli(capsys, "extract", "--model", model_dir, "--image", dataset / "images/kyc-000000.jpg",
                             "--fields", fields)
    assert code == 2
    assert_clean(code, err)


def test_extract_bad_image_and_model(capsys, model_dir, dataset, tmp_path):
    (tmp_path / "not.jpg").write_text("hello")
    for image, model in ((tmp_path / "missing.jpg", model_dir), (tmp_path / "not.jpg", model_dir),
                         (dataset / "images/kyc-000000.jpg", tmp_path)):
        code, out, err = run_cli(capsys, "extract", "--model", model, "--image", image, "--fields", "name")
        assert code == 2, (image, model, err)
        assert_clean(code, err)


def test_extract_prints_json(capsys, model_dir, dataset):
    import json

    code, out, err = run_cli(capsys, "extract", "--model", model_dir, "--image", dataset / "images/kyc-000000.jpg",
                             "--fields", "name,pan", "--max-new-tokens", "6")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["fields"]) == {"name", "pan"} and "valid_json" in result
