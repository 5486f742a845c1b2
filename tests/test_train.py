"""The trainer: schedule, exact resume after SIGKILL, 2-process DDP, and the CLI end to end on a tiny config."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanovlm.cli import main
from nanovlm.config import ConfigError
from nanovlm.data.synth import make_scenes
from nanovlm.devices import has_fast_bf16
from nanovlm.train import TrainConfig, lr_at, split_overrides

TINY_RUN = ["--preset", "tiny", "--batch-size", "8", "--threads", "1", "--quiet",
            "--set", "warmup_steps=3", "--set", "eval_batches=2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, n=96, style="short", image_size=32, seed=0, progress=False)
    return folder


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _nanovlm(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "nanovlm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_split_overrides():
    train_kw, model_kw = split_overrides({"lr": 0.1, "decoder.n_layer": 2, "fusion": "prefix"})
    assert train_kw == {"lr": 0.1} and model_kw == {"decoder.n_layer": 2, "fusion": "prefix"}
    with pytest.raises(ConfigError, match=r"unknown option 'lrr'.*did you mean lr\?"):
        split_overrides({"lrr": 0.1})
    with pytest.raises(ConfigError, match="freeze"):
        TrainConfig(freeze=["eyes"])


def test_a_preset_recipe_sets_defaults_that_the_user_overrides():
    from nanovlm.train import PRESET_RECIPES
    recipe = PRESET_RECIPES["documents"]
    documents = TrainConfig.from_options({"preset": "documents"})
    assert (documents.steps, documents.augment, documents.split_digits) == (recipe["steps"], False, True)
    mine = TrainConfig.from_options({"preset": "documents", "steps": "10", "augment": "true"})
    assert (mine.steps, mine.augment, mine.split_digits) == (10, True, True)
    demo = TrainConfig.from_options({"preset": "demo"})      # a preset without a recipe keeps the plain defaults
    assert (demo.steps, demo.augment, demo.split_digits) == (TrainConfig.steps, True, False)


def test_train_cli_writes_checkpoints_metrics_and_curve(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(scenes), "--out", str(run), "--steps", "6", *TINY_RUN, "--set", "eval_every=3",
               "--set", 'freeze=["vision"]'])
    assert rc == 0
    assert "trained 6 steps" in capsys.readouterr().out
    for name in ("best/model.safetensors", "last/optimizer.safetensors", "last/trainer_state.json",
                 "loss_curve.png", "tokenizer.json"):
        assert (run / name).is_file(), name
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert "val_loss" in metrics[2] and "val_loss" in metrics[5]
    assert json.loads((run / "last/trainer_state.json").read_text())["step"] == 6
    # precision auto is resolved for this machine, and the run records what it used
    used = json.loads((run / "train_config.json").read_text())["precision"]
    assert used == ("bf16" if has_fast_bf16(torch.device("cpu")) else "fp32")
    # the frozen vision encoder did not move; the decoder did
    from nanovlm.model.vlm import VisionLanguageModel
    from safetensors.torch import load_file
    trained = load_file(str(run / "last/model.safetensors"))
    model = VisionLanguageModel.from_pretrained(run / "last")
    assert torch.equal(model.vision.blocks[0].mlp.fc.weight, trained["vision.blocks.0.mlp.fc.weight"])


def test_resume_after_sigkill_matches_uninterrupted_run(scenes, tmp_path):
    steps, common = 24, ["--data", scenes, "--steps", "24", *TINY_RUN, "--set", "eval_every=4"]
    full = tmp_path / "full"
    assert _nanovlm("train", "--out", full, *common).wait() == 0

    killed = tmp_path / "killed"
    proc = _nanovlm("train", "--out", killed, *common)
    deadline = time.time() + 120
    state = killed / "last" / "trainer_state.json"
    while time.time() < deadline:   # kill once a mid-run checkpoint exists and training has gone on past it
        if state.is_file() and json.loads(state.read_text())["step"] >= 8 and len(_metrics(killed)) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_metrics(killed))
    assert killed_at < steps, "the run finished before it could be killed; make it longer"
    assert not (killed / "last.tmp").exists() or not (killed / "last.tmp" / "trainer_state.json").exists()

    assert _nanovlm("train", "--out", killed, *common, "--resume").wait() == 0
    a, b = _metrics(full), _metrics(killed)
    assert [m["step"] for m in b] == list(range(1, steps + 1)), "steps lost or repeated in metrics.jsonl"
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6), (x, y)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], rel=1e-5)


def test_two_process_ddp_on_cpu(scenes, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nanovlm.cli",
           "train", "--data", str(scenes), "--out", str(run), "--steps", "4", *TINY_RUN, "--set", "eval_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("trained 4 steps") == 1, "only rank 0 reports"
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]
    assert (run / "last" / "model.safetensors").is_file()


@pytest.mark.parametrize("problem", ["missing folder", "broken line", "unreadable image", "unknown preset",
                                     "unknown key"])
def test_bad_input_is_one_clear_error(problem, scenes, tmp_path, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2", *TINY_RUN]
    expected = {"missing folder": "not found", "broken line": "records.jsonl line 3",
                "unreadable image": "images/", "unknown preset": "unknown preset", "unknown key": "unknown option 'learning_rate'"}
    if problem == "missing folder":
        args[2] = str(tmp_path / "nowhere")
    elif problem == "broken line":
        lines = (data / "records.jsonl").read_text().splitlines()
        lines[2] = lines[2][:40]
        (data / "records.jsonl").write_text("\n".join(lines) + "\n")
    elif problem == "unreadable image":
        for record in map(json.loads, (data / "records.jsonl").read_text().splitlines()):
            (data / record["images"][0]).write_bytes(b"not a png")
    elif problem == "unknown preset":
        args[args.index("tiny")] = "huge"
    else:
        args += ["--set", "learning_rate=3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected[problem] in err, err
    assert "Traceback" not in err


FROZEN = ["--set", "freeze=vision", "--set", "eval_every=6"]


@pytest.mark.parametrize("stem", ["conv2", "resnet", "scattering"])
def test_cached_vision_trains_as_computed_vision(scenes, tmp_path, capsys, stem):
    """cache_vision=true: past the first epoch the encoder's outputs come from the cache, and the losses stay
    those of the run that computes them. A frozen encoder runs in inference mode in both, its from-scratch batch
    norms (resnet, scattering) calibrated on the training pictures first."""
    losses = {}
    for cache in ("false", "true"):
        run = tmp_path / f"cache-{cache}"
        assert main(["train", "--data", str(scenes), "--out", str(run), "--steps", "12", *TINY_RUN, *FROZEN,
                     "--set", f"vision.patch_stem={stem}", "--set", "augment=false",
                     "--set", f"cache_vision={cache}"]) == 0
        losses[cache] = [m["loss"] for m in _metrics(run)]
    out = capsys.readouterr().out
    assert "of encoder outputs for" in out
    assert ("batch norm(s) of the encoder took their statistics from" in out) == (stem != "conv2")
    assert len(losses["false"]) == 12
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5, abs=1e-6)


def test_cached_scattering_coefficients_train_as_computed_ones(scenes, tmp_path, capsys):
    """With the scattering stem, cache_vision keeps the wavelet coefficients while the stem's norm and 1 x 1
    conv, the ViT blocks and the rest train: the losses are those of the run that computes them."""
    losses = {}
    for cache in ("false", "true"):
        run = tmp_path / f"cache-{cache}"
        assert main(["train", "--data", str(scenes), "--out", str(run), "--steps", "12", *TINY_RUN,
                     "--set", "vision.patch_stem=scattering", "--set", "eval_every=6", "--set", "augment=false",
                     "--set", f"cache_vision={cache}"]) == 0
        losses[cache] = [m["loss"] for m in _metrics(run)]
    assert "of scattering coefficients for" in capsys.readouterr().out
    assert len(losses["false"]) == 12 and losses["false"][-1] < losses["false"][0]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5, abs=1e-6)


def test_cached_vision_with_flips_keeps_the_mirror_images(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(scenes), "--out", str(run), "--steps", "4", *TINY_RUN, *FROZEN,
                 "--set", "cache_vision=true"]) == 0
    assert "and their mirror images; augmentation limited to mirror flips" in capsys.readouterr().out
    assert (run / "best/model.safetensors").is_file()
