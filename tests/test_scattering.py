"""The scattering stem (vision.patch_stem=scattering): fixed Morlet wavelets, checked against kymatio's numbers,
and its fixed front kept by cache_vision while the rest of the encoder trains."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanovlm.config import ConfigError, from_name
from nanovlm.model.scattering import Scattering2d
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.train import TrainConfig, check_cache_vision

REFERENCE = Path(__file__).parent / "data" / "scattering_kymatio_J2_L4.safetensors"
SCATTERING = {"vision.patch_stem": "scattering", "vision.use_cls": False, "vision.position": "sincos"}


def test_scattering_gives_kymatios_coefficients():
    """The reference was computed by kymatio 0.3.0's Scattering2D (J=2, L=4) on two 32 x 32 RGB pictures without
    padding (pre_pad=True: the picture is periodic, as ours); kymatio leaves out the border rows and columns."""
    reference = load_file(REFERENCE)
    ours = Scattering2d(32, 32, J=2, L=4)(reference["images"])[..., 1:-1, 1:-1]
    assert ours.shape == reference["coefficients"].shape == (2, 3, 1 + 2 * 4 + 16, 6, 6)
    torch.testing.assert_close(ours, reference["coefficients"], atol=5e-5, rtol=1e-4)


def test_scattering_sees_edges_not_brightness_and_follows_a_shift():
    scattering = Scattering2d(32, 32, J=2, L=4)
    flat = scattering(torch.full((1, 1, 32, 32), 0.7))
    torch.testing.assert_close(flat[:, :, 0], torch.full_like(flat[:, :, 0], 0.7))   # order 0: the local mean
    assert flat[:, :, 1:].abs().max() < 1e-5                                           # wavelets have zero mean
    picture = torch.zeros(1, 1, 32, 32)
    picture[..., 8:20, 10:14] = 1.0                                                     # a bar: vertical edges
    coefficients = scattering(picture)
    shifted = scattering(torch.roll(picture, shifts=(4, 8), dims=(-2, -1)))            # one and two patches on
    torch.testing.assert_close(shifted, torch.roll(coefficients, shifts=(1, 2), dims=(-2, -1)), atol=1e-5, rtol=1e-4)
    edges = coefficients[0, 0, 1:5].sum(dim=(-2, -1))                                  # order 1, finest scale
    assert edges.max() > 2 * edges.min()                                               # orientation matters
    # mirrored across the diagonal, edges at angle a turn to 90 deg - a: the 4 orientations (45, 0, -45, -90 deg)
    # become (45, -90, -45, 0)
    turned = scattering(picture.transpose(-2, -1))[0, 0, 1:5].sum(dim=(-2, -1))
    torch.testing.assert_close(turned, edges[[0, 3, 2, 1]], atol=1e-5, rtol=1e-4)


def test_a_wider_view_keeps_the_token_grid():
    """oversample=1: wavelets and average at scale 2^J, coefficients on the 2^(J-1) grid. Shifting the picture by
    one cell of that grid shifts the coefficients by one token, and every second token is the plain J-scale
    transform (order 0 exactly; the rest up to the aliasing that the plain transform's coarser steps add)."""
    picture = torch.zeros(1, 1, 32, 32)
    picture[..., 8:20, 10:14] = 1.0
    wide = Scattering2d(32, 32, J=3, L=4, oversample=1)
    coefficients = wide(picture)
    assert coefficients.shape == (1, 1, 1 + 3 * 4 + 16 * 3, 8, 8)
    shifted = wide(torch.roll(picture, shifts=(4, -8), dims=(-2, -1)))
    torch.testing.assert_close(shifted, torch.roll(coefficients, shifts=(1, -2), dims=(-2, -1)), atol=1e-5, rtol=1e-4)
    plain = Scattering2d(32, 32, J=3, L=4)(picture)
    torch.testing.assert_close(coefficients[:, :, 0, ::2, ::2], plain[:, :, 0], atol=1e-6, rtol=1e-5)
    error = (coefficients[..., ::2, ::2] - plain).norm() / plain.norm()
    assert error < 0.1, f"the oversampled transform strays from the plain one by {error:.1%}"


def test_scattering_context_widens_what_a_token_sees():
    cfg = from_name("tiny", {**SCATTERING, "vision.scattering_context": 1})             # patch 8: J = 4 on 4 x 4 tokens
    model = VisionLanguageModel(cfg).eval()
    assert model.vision.patch_stem.fixed(torch.rand(2, 3, 32, 32)).shape == (2, 3 * (1 + 4 * 4 + 16 * 6), 4, 4)
    assert model.vision(torch.rand(2, 3, 32, 32)).shape == (2, 16, cfg.vision.width)
    with pytest.raises(ConfigError, match="must fit in the picture's shorter side"):
        from_name("tiny", {**SCATTERING, "vision.scattering_context": 3})
    with pytest.raises(ConfigError, match="applies to vision.patch_stem=scattering only"):
        from_name("tiny", {"vision.scattering_context": 1})


def test_the_scattering_stem_trains_only_after_its_wavelets():
    cfg = from_name("tiny", SCATTERING)
    model = VisionLanguageModel(cfg)
    stem = model.vision.patch_stem
    assert {name for name, _ in stem.named_parameters()} == {"proj.weight", "proj.bias"}
    assert not any("scattering" in key for key in model.state_dict())                 # fixed filters: not saved
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    fixed = stem.fixed(images)
    assert fixed.shape == (2, 3 * (1 + 3 * 4 + 16 * 3), 4, 4) and not fixed.requires_grad
    torch.testing.assert_close(model.vision(None, fixed=fixed), model.vision(images))
    assert model.vision(images).shape == (2, cfg.vision.num_patches, cfg.vision.width)


def test_a_page_that_is_not_square_is_scattered_as_it_is():
    cfg = from_name("tiny", {**SCATTERING, "vision.image_size": 64, "vision.image_height": 32})
    model = VisionLanguageModel(cfg).eval()
    assert model.vision.patch_stem.fixed(torch.rand(2, 3, 32, 64)).shape == (2, 3 * 61, 4, 8)
    assert model.vision(torch.rand(2, 3, 32, 64)).shape == (2, 4 * 8, cfg.vision.width)


def test_the_scattering_stem_needs_a_power_of_two_patch():
    with pytest.raises(ConfigError, match="power of two"):
        from_name("tiny", {**SCATTERING, "vision.patch_size": 6, "vision.image_size": 36})


def test_cache_vision_keeps_the_frozen_encoder_or_the_scattering_front():
    assert check_cache_vision(from_name("tiny").vision, TrainConfig(freeze=["vision"])) == "vision_features"
    assert check_cache_vision(from_name("tiny", SCATTERING).vision, TrainConfig()) == "stem_features"
    assert check_cache_vision(from_name("tiny", SCATTERING).vision, TrainConfig(freeze=["vision"])) == "vision_features"
    with pytest.raises(ConfigError, match="add freeze=vision, or use the scattering stem"):
        check_cache_vision(from_name("tiny").vision, TrainConfig(cache_vision=True))


def test_a_saved_scattering_model_loads_and_gives_the_same_numbers(tmp_path):
    """from_pretrained builds on the meta device: the fixed filters must still be there after loading."""
    model = VisionLanguageModel(from_name("tiny", SCATTERING)).eval()
    images = torch.rand(2, 3, 32, 32)
    model.save_pretrained(tmp_path / "model")
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "model").eval()
    torch.testing.assert_close(loaded.vision(images), model.vision(images))


def test_demo_scattering_preset_is_the_measured_model_and_recipe():
    # docs/form.md's fourteenth round measured `--preset demo` with these overrides and options: the preset and its
    # recipe must be that model and that training, so the figures carry over
    overrides = {**SCATTERING, "vision.n_layer": 0, "vision.width": 512, "vision.scattering_context": 1,
                 "projector.shuffle_factor": 1, "decoder.n_layer": 4, "decoder.qk_norm": 10.0,
                 "decoder.hold_image_tokens": True}
    models = []
    for cfg in (from_name("demo-scattering"), from_name("demo", overrides)):
        torch.manual_seed(0)
        models.append(VisionLanguageModel(cfg))
    preset, measured = (m.state_dict() for m in models)
    assert preset.keys() == measured.keys() and all(torch.equal(preset[k], measured[k]) for k in preset)
    recipe = TrainConfig.from_options({"preset": "demo-scattering"})
    assert (recipe.freeze, recipe.cache_vision, recipe.augment, recipe.lr, recipe.steps) == (["vision"], True, False,
                                                                                            2e-3, 3500)
    assert not recipe.group_by_length and recipe.lr_projector is None and recipe.lr_vision is None
    assert (recipe.max_readout_weight, recipe.max_readout_from, recipe.max_readout_pool, recipe.max_readout_words) == (
        1.0, "projector", "tokens", "conversation")
    assert check_cache_vision(models[0].cfg.vision, recipe) == "vision_features"   # the whole encoder is cached
