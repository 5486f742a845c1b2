"""`--set vision_init=PATH` with another nanovlm model's encoder: a model folder or a `vision.*` safetensors file
(what benchmarks/form_probe.py supervised --save writes). The EfficientNet form is tested in test_efficientnet.py."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nanovlm.convert.vision_init import load_vision_init, save_vision
from nanovlm.model.vlm import CheckpointError, VisionLanguageModel

from cli_helpers import assert_clean, run_cli
from conftest import tiny_config

STEM = {"vision.patch_stem": "resnet", "vision.stem_channels": 16}


def _same_vision(a, b) -> bool:
    """Same encoder tensors, batch-norm statistics included (their step counters are not weights: not saved)."""
    sa, sb = a.vision.state_dict(), b.vision.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if not k.endswith("num_batches_tracked"))


def test_an_encoder_saved_alone_or_in_a_model_folder_starts_another_model(tmp_path):
    torch.manual_seed(0)
    source = VisionLanguageModel(tiny_config(**STEM))
    for m in source.vision.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.25)                      # statistics travel with the weights
    save_vision(source, tmp_path / "encoder.safetensors")
    source.save_pretrained(tmp_path / "model")
    for path in (tmp_path / "encoder.safetensors", tmp_path / "model"):
        torch.manual_seed(1)
        target = VisionLanguageModel(tiny_config(**STEM))
        assert not _same_vision(source, target)
        n = load_vision_init(target, path)
        assert n == len([k for k in target.vision.state_dict() if not k.endswith("num_batches_tracked")])
        assert _same_vision(source, target)
        assert not torch.equal(source.projector.proj.weight, target.projector.proj.weight)   # the encoder only


def test_an_encoder_of_another_shape_or_no_encoder_is_one_clear_error(tmp_path):
    save_vision(VisionLanguageModel(tiny_config(**STEM)), tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match="mis-shaped|missing|unexpected"):
        load_vision_init(VisionLanguageModel(tiny_config()), tmp_path / "resnet.safetensors")
    save_file({"decoder.x": torch.zeros(2)}, str(tmp_path / "decoder_only.safetensors"))
    with pytest.raises(CheckpointError, match="no vision"):
        load_vision_init(VisionLanguageModel(tiny_config()), tmp_path / "decoder_only.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_vision_init(VisionLanguageModel(tiny_config()), tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file or model folder"):
        load_vision_init(VisionLanguageModel(tiny_config()), tmp_path / "nothing")


def test_train_with_a_mismatched_encoder_says_so_in_one_line(capsys, small_scenes, tmp_path):
    save_vision(VisionLanguageModel(tiny_config(**STEM)), tmp_path / "resnet.safetensors")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--data", small_scenes, "--out", tmp_path / "run",
                           "--steps", "1", "--set", f"vision_init={tmp_path / 'resnet.safetensors'}")
    assert_clean(code, err, allowed=(2,))
    assert "vision_init" in err and "resnet.safetensors" in err
