"""cache_vision=true: a frozen encoder's outputs kept per picture (the training runs with it: test_train.py)."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from nanovlm.config import ConfigError, from_name
from nanovlm.data.loader import FLIPPED, Augmentation, VLMDataset
from nanovlm.data.synth import make_scenes
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer
from nanovlm.train import TrainConfig, calibrate_batch_norms, check_cache_vision, untouched_batch_norms
from nanovlm.vision_cache import VisionCache, check_cache_fits


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, n=48, style="vqa", image_size=32, seed=0, progress=False)
    return folder


def _dataset(scenes, augmentation, picture_keys):
    tokenizer = Tokenizer.from_file(_tokenizer(scenes))
    cfg = tokenizer.configure(from_name("tiny"))
    return VLMDataset(scenes, tokenizer, cfg, augmentation=augmentation, picture_keys=picture_keys, max_len=1024), cfg


def _tokenizer(scenes) -> Path:
    path = scenes / "tokenizer.json"
    if not path.exists():
        from nanovlm.data import format as fmt
        Tokenizer.train([t for r in fmt.read_records(scenes) for turn in r["texts"] for t in turn.values()],
                        vocab_size=300).save(path)
    return path


def test_picture_keys_name_the_pictures_the_plain_samples_hold(scenes):
    keyed, _ = _dataset(scenes, Augmentation.flips_only(), picture_keys=True)
    plain, _ = _dataset(scenes, Augmentation.flips_only(), picture_keys=False)
    flipped = 0
    for item in [(i, epoch) for i in range(6) for epoch in range(2)]:
        a, b = keyed[item], plain[item]
        assert a["images"] is None and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(torch.stack([keyed.picture(k) for k in a["picture_keys"]]), b["images"])
        flipped += a["picture_keys"][0].endswith(FLIPPED)
    assert 0 < flipped < 12
    with pytest.raises(ValueError, match="without rotation or jitter"):
        _dataset(scenes, Augmentation(), picture_keys=True)


def test_vision_cache_computes_each_picture_once():
    model = VisionLanguageModel(from_name("tiny")).eval()
    pictures = {f"p{i}": torch.rand(3, model.cfg.vision.image_size, model.cfg.vision.image_size) for i in range(4)}
    loads = []
    cache = VisionCache(model.vision, lambda key: loads.append(key) or pictures[key], torch.device("cpu"))
    first = cache.features(["p0", "p1", "p0"])
    second = cache.features(["p1", "p2", "p3"])
    assert loads == ["p0", "p1", "p2", "p3"]
    assert (cache.misses, cache.hits) == (4, 2)
    with torch.no_grad():
        expected = model.vision(torch.stack([pictures[k] for k in ("p1", "p2", "p3")]))
    torch.testing.assert_close(second, expected)
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], second[0])
    assert cache.nbytes() == 4 * first[0].numel() * first.element_size()


def test_cache_that_would_outgrow_the_memory_is_refused_up_front():
    assert check_cache_fits(2000, 64 * 128, memory_bytes=2**40) == 2000 * 64 * 128 * 4
    with pytest.raises(ValueError, match="more than half of this machine's"):
        check_cache_fits(10**6, 64 * 128, memory_bytes=2**34)


def test_cache_vision_needs_an_unchanging_encoder():
    """The encoder (or its scattering front: test_scattering.py) must not train; the losses that teach it from
    its pictures cannot run on kept outputs."""
    with pytest.raises(ConfigError, match="add freeze=vision"):
        check_cache_vision(from_name("tiny").vision, TrainConfig(cache_vision=True))
    with pytest.raises(ConfigError, match="cannot be combined with cache_vision"):
        TrainConfig(cache_vision=True, freeze=["vision"], max_readout_weight=1.0)
    assert check_cache_vision(from_name("tiny").vision, TrainConfig(cache_vision=True, freeze=["vision"])) \
        == "vision_features"


def test_a_frozen_encoders_fresh_batch_norms_take_the_pictures_statistics():
    torch.manual_seed(0)
    vision = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    loaded = vision[3]
    loaded.running_mean.fill_(0.5)                      # statistics it already holds (e.g. from vision_init)
    pictures = [torch.rand(3, 8, 8) * 2 + 1 for _ in range(40)]
    assert untouched_batch_norms(vision) == [vision[1]]
    assert calibrate_batch_norms(vision, pictures, batch_size=20) == 1
    with torch.no_grad():
        outputs = vision[0](torch.stack(pictures))
    torch.testing.assert_close(vision[1].running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vision[1].running_var, outputs.var(dim=(0, 2, 3)), atol=0.02, rtol=0.05)
    assert bool((loaded.running_mean == 0.5).all()) and vision.training and vision[1].momentum == 0.1
    assert untouched_batch_norms(vision) == [] and calibrate_batch_norms(vision, pictures) == 0
