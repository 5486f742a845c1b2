"""Training on scenes VQA with `select_by=vqa`: `best` is the checkpoint with the best held-out VQA accuracy."""
import json

import pytest

from nanovlm.cli import main
from nanovlm.config import ConfigError
from nanovlm.data.synth import make_scenes
from nanovlm.train import TrainConfig, update_best


@pytest.fixture(scope="module")
def vqa_scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa")
    make_scenes(folder, n=80, style="vqa", image_size=32, seed=0, progress=False)
    return folder


def test_select_by_is_checked():
    with pytest.raises(ConfigError, match="select_by"):
        TrainConfig(select_by="bleu")
    with pytest.raises(ConfigError, match="select_questions"):
        TrainConfig(select_by="vqa", select_questions=0)
    TrainConfig(select_by="vqa")


def test_update_best_follows_the_selected_metric():
    loss_cfg, vqa_cfg = TrainConfig(), TrainConfig(select_by="vqa", patience=2)
    state = {"best_val_loss": None, "best_score": None, "evals_without_improvement": 0}
    history = [{"val_loss": 2.0, "val_vqa": 0.3}, {"val_loss": 1.5, "val_vqa": 0.2}, {"val_loss": 1.8, "val_vqa": 0.5},
               {"val_loss": 1.0, "val_vqa": 0.4}, {"val_loss": 0.9, "val_vqa": 0.4}]
    improved, stops = [], []
    for record in history:
        stops.append(update_best(state, record, vqa_cfg))
        improved.append(state["evals_without_improvement"] == 0)
    assert improved == [True, False, True, False, False] and stops == [False, False, False, False, True]
    assert state["best_score"] == 0.5 and state["best_val_loss"] == 0.9   # the loss is still tracked
    state = {"best_val_loss": None, "best_score": None, "evals_without_improvement": 0}
    assert [update_best(state, r, loss_cfg) or state["evals_without_improvement"] == 0 for r in history] == \
        [True, True, False, True, True]


def test_cli_training_keeps_the_best_vqa_checkpoint(vqa_scenes, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--data", str(vqa_scenes), "--out", str(run), "--steps", "4",
               "--batch-size", "8", "--threads", "1", "--quiet", "--set", "warmup_steps=1", "--set", "eval_every=2",
               "--set", "eval_batches=1", "--set", "select_by=vqa", "--set", "select_questions=12",
               "--set", "vision.image_size=32"])
    assert rc == 0, capsys.readouterr().err
    evals = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
    assert len(evals) == 2 and all(0.0 <= m["val_vqa"] <= 1.0 for m in evals)
    state = json.loads((run / "best" / "trainer_state.json").read_text())
    best = max(evals, key=lambda m: m["val_vqa"])   # the first of equals: later ties are no improvement
    assert state["step"] == best["step"] and state["best_score"] == best["val_vqa"]
    assert (run / "best" / "model.safetensors").is_file()
