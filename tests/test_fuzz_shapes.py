"""`nanovlm data shapes` and `nanovlm convert efficientnet` under bad input: exit 2, exactly one `error:` line, no
traceback, and nothing already there replaced without --overwrite."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_fuzz_cli import assert_clean, run_cli, tree_digest

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    from nanovlm import cli
    assert cli.main(["data", "shapes", "--out", str(folder), "--n", "3", "--image-size", "16"]) == 0
    return folder


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "n (the number of pictures) must be >= 1"),
    (["--n", "many"], "invalid int value"),
    (["--image-size", "8"], "image_size must be in 16..1024"),
    (["--image-size", "5000"], "image_size must be in 16..1024"),
    (["--shapes", "blob"], "shapes must be one of"),
    (["--shapes", ","], "shapes must be one of"),
    (["--shapes", "circle"], "at least two"),
    (["--seed", "x"], "invalid int value"),
    (["--objects", "0"], "objects must be a number or a range"),
    (["--objects", "4"], "objects must be a number or a range"),
    (["--objects", "3-1"], "objects must be a number or a range"),
    (["--objects", "one"], "objects must be a number or a range"),
    (["--objects", "1-"], "objects must be a number or a range"),
    (["--questions", "size"], "questions must be all or"),
    (["--questions", ","], "questions must be all or"),
    (["--questions", "relation", "--objects", "1"], "relation questions need pictures of at least two things"),
    (["--per-thing", "all"], "per_thing must be one of one, both, apart"),
    (["--per-thing", ""], "per_thing must be one of one, both, apart"),
])
def test_bad_shapes_arguments(capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, "data", "shapes", "--out", tmp_path / "d", *args)
    assert_clean(code, err)
    assert code == 2 and message in err
    assert not (tmp_path / "d" / "records.jsonl").exists()


def test_existing_dataset_is_kept_without_overwrite(capsys, dataset):
    before = tree_digest(dataset)
    code, _, err = run_cli(capsys, "data", "shapes", "--out", dataset, "--n", "2", "--image-size", "16")
    assert_clean(code, err)
    assert code == 2 and "--overwrite" in err and tree_digest(dataset) == before


@FUZZ
@given(n=st.integers(-5, 3), size=st.integers(-10, 40), shapes=st.sampled_from(["all", "geometric", "dog,cat",
                                                                                 "dog,,", "Circle,square", "x"]))
def test_random_shapes_arguments(capsys, tmp_path_factory, n, size, shapes):
    out = tmp_path_factory.mktemp("fuzz")
    code, _, err = run_cli(capsys, "data", "shapes", "--out", out, "--n", n, "--image-size", size, "--shapes", shapes)
    assert_clean(code, err)
    assert (code == 0) == (n >= 1 and 16 <= size <= 1024 and shapes in ("all", "geometric", "dog,cat"))


@FUZZ
@given(objects=st.sampled_from(["1", "2-3", "1-3", "0-2", "2-2", "x", "", "-1", "1-2-3"]),
       questions=st.sampled_from(["all", "shape", "color,count", "relation", "shape,,", "Shape", "", "all,shape"]))
def test_random_objects_and_questions(capsys, tmp_path_factory, objects, questions):
    out = tmp_path_factory.mktemp("fuzz")
    code, _, err = run_cli(capsys, "data", "shapes", "--out", out, "--n", 3, "--image-size", 16,
                           "--objects", objects, "--questions", questions)
    assert_clean(code, err)
    good_objects = objects in ("1", "2-3", "1-3", "2-2")
    good_questions = questions in ("all", "shape", "color,count", "relation", "shape,,")
    assert (code == 0) == (good_objects and good_questions and not (questions == "relation" and objects == "1"))
    if code == 0:
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        assert len(records) == 3 and all(r["texts"] for r in records)


@pytest.mark.parametrize("source, message", [("missing.pth", "no such checkpoint file"),
                                             ("records.jsonl", "not a readable torch checkpoint")])
def test_bad_efficientnet_sources(capsys, tmp_path, dataset, source, message):
    code, _, err = run_cli(capsys, "convert", "efficientnet", "--out", tmp_path / "w.safetensors",
                           "--source", dataset / source)
    assert_clean(code, err)
    assert code == 2 and message in err and not (tmp_path / "w.safetensors").exists()


def test_convert_never_replaces_a_file(capsys, tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_text("mine")
    code, _, err = run_cli(capsys, "convert", "efficientnet", "--out", out)
    assert_clean(code, err)
    assert code == 2 and out.read_text() == "mine"
