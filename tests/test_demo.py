"""The main job end to end through the CLI, on a few scenes and steps."""
import json
import subprocess
import sys

from nanovlm.demo import DemoConfig


def test_demo_runs_end_to_end_and_passes_overrides(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nanovlm.cli", "demo", "--out", str(out), "--n", "80", "--steps", "4",
           "--eval-scenes", "4", "--set", "decoder.n_layer=1", "--set", "lr_vision=1e-4", "--set", "threads=1", "--set", "progress=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "object accuracy", "total time"):
        assert step in result.stdout, step
    report = json.loads((out / "grounding.json").read_text())
    samples = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    assert report["summary"]["scenes"] == 4 and len(samples) == 4
    assert all(s["answer"].startswith(s["answer_start"]) for s in samples)
    assert "object accuracy" in (out / "grounding.md").read_text()
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["decoder"]["n_layer"] == 1                     # the --set model key reached the model
    assert (out / "model" / "model.safetensors").is_file()
    train_config = json.loads((out / "run" / "train_config.json").read_text())
    assert train_config["lr_vision"] == 1e-4                                  # --set beats the demo's setting
    assert train_config["lr_projector"] == DemoConfig().lr_vision and train_config["augment"] is False


def test_demo_rejects_an_unknown_set_key(tmp_path):
    cmd = [sys.executable, "-m", "nanovlm.cli", "demo", "--out", str(tmp_path / "d"), "--n", "20", "--steps", "1",
           "--set", "bogus=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown option 'bogus'" in result.stderr and "Traceback" not in result.stderr
