"""The VLM core: presets, fusion, forward/loss, KV-cache generation, sampling."""
import pytest
import torch

from nanovlm import sampling
from nanovlm.config import PAPER_TABLE2, ConfigError, from_name
from nanovlm.model.projector import pixel_shuffle
from nanovlm.model.vlm import VisionLanguageModel

from conftest import tiny_config


@pytest.mark.parametrize("name,target", [("mini", 5e6), ("base", 16e6), ("large", 25e6)])
def test_paper_presets_parameter_counts(name, target):
    with torch.device("meta"):
        counts = VisionLanguageModel(from_name(name)).num_parameters()
    assert abs(counts["total"] - target) / target < 0.15, counts
    # the vision encoder dominates, as in the paper's Table 2
    assert abs(counts["vision"] / counts["total"] - PAPER_TABLE2[name]["vision"]) < 0.08


def test_nanovlm_222m_shape():
    cfg = from_name("nanovlm-222m")
    with torch.device("meta"):
        counts = VisionLanguageModel(cfg).num_parameters()
    assert 215e6 < counts["total"] < 230e6
    assert cfg.image_tokens_per_image == 49


def test_unknown_preset_and_key():
    with pytest.raises(ConfigError, match="unknown preset"):
        from_name("gigantic")
    with pytest.raises(ConfigError, match="unknown model key 'decoder.n_layers'; did you mean decoder.n_layer"):
        from_name("tiny").with_overrides({"decoder.n_layers": 3})


def test_pixel_shuffle_groups_neighbours():
    # 4x4 grid of tokens whose single channel is its index; factor 2 -> 4 tokens holding 2x2 blocks
    x = torch.arange(16.0).view(1, 16, 1)
    y = pixel_shuffle(x, 2)
    assert y.shape == (1, 4, 4)
    assert y[0, 0].tolist() == [0, 1, 4, 5]
    assert y[0, 3].tolist() == [10, 11, 14, 15]
    # a 2 x 4 grid (rows x cols): two tokens side by side
    wide = pixel_shuffle(torch.arange(8.0).view(1, 8, 1), 2, grid=(2, 4))
    assert wide[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_a_rectangular_picture_is_read_as_it_is(tmp_path):
    """vision.image_height: a 48 x 32 page is a 3 x 2 grid of 16 px patches (wide, not squeezed), with its own 2-D
    positions; pixel shuffle, the loader's resize and a save/load round trip keep that shape."""
    from PIL import Image

    from nanovlm.data.transforms import to_pixels, to_tensor
    from nanovlm.model.vision import sincos_2d
    cfg = tiny_config(**{"vision.image_size": 64, "vision.image_height": 32, "vision.patch_size": 16,
                         "vision.position": "sincos", "projector.kind": "pixel_shuffle", "projector.shuffle_factor": 2})
    assert cfg.vision.grid == (2, 4) and cfg.vision.num_patches == 8 and cfg.image_tokens_per_image == 2
    table = sincos_2d(2, 4, 8)[0]
    torch.testing.assert_close(table[:, 4], torch.sin(torch.tensor([0., 1, 2, 3, 0, 1, 2, 3])))   # the column
    page = Image.new("RGB", (300, 100), "white")
    assert to_tensor(page, cfg.vision).shape == (3, 32, 64) and to_pixels(page, cfg.vision).shape == (32, 64, 3)
    model = VisionLanguageModel(cfg).eval()
    images = torch.rand(2, 3, 32, 64)
    assert model.encode_images(images).shape == (2, 2, cfg.decoder.n_embd)
    with pytest.raises(AssertionError, match=r"expected images of shape \(B, 3, 32, 64\)"):
        model.vision(torch.rand(2, 3, 64, 64))
    model.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path).eval()
    assert again.cfg.vision.grid == (2, 4)
    torch.testing.assert_close(again.encode_images(images), model.encode_images(images))


def _batch(cfg, B=2, T=9, images_per_sample=1):
    n_img = cfg.image_tokens_per_image * images_per_sample
    text = torch.randint(0, cfg.decoder.vocab_size - 3, (B, T))
    ids = torch.cat([torch.full((B, n_img), cfg.image_token_id), text], dim=1)
    images = torch.randn(B * images_per_sample, 3, cfg.vision.image_size, cfg.vision.image_size)
    return ids, images


@pytest.mark.parametrize("preset", ["tiny", "nanovlm-222m-small"])
def test_forward_loss_and_backward(preset):
    cfg = _small_llama() if preset != "tiny" else tiny_config()
    model = VisionLanguageModel(cfg)
    ids, images = _batch(cfg)
    labels = ids.roll(-1, dims=1)
    labels[:, : cfg.image_tokens_per_image] = -100
    logits, loss = model(ids, images, labels=labels)
    assert logits.shape == (*ids.shape, cfg.decoder.vocab_size)
    # random init: loss close to ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(cfg.decoder.vocab_size)).item()) < 1.0
    loss.backward()
    assert model.vision.patch_stem.parameters().__next__().grad is not None, "no gradient reached the vision encoder"


def test_image_tokens_change_the_output():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg).eval()
    ids, images = _batch(cfg, B=1)
    a, _ = model(ids, images)
    b, _ = model(ids, images.flip(-1))
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_placeholder_count_mismatch_is_a_clear_error():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    ids, images = _batch(cfg, B=2)
    with pytest.raises(ValueError, match="placeholder tokens but 1 image"):
        model(ids, images[:1])
    with pytest.raises(ValueError, match="placeholder"):
        model(ids, None)


def test_several_images_per_sample():
    cfg = _small_llama()
    model = VisionLanguageModel(cfg).eval()
    ids, images = _batch(cfg, B=2, images_per_sample=2)
    logits, _ = model(ids, images)
    assert logits.shape[1] == ids.shape[1]


def _small_llama():
    cfg = from_name("nanovlm-222m").with_overrides({
        "vision.image_size": 32, "vision.patch_size": 8, "vision.width": 32, "vision.n_layer": 1, "vision.n_head": 2,
        "vision.mlp_hidden": 64, "decoder.vocab_size": 256, "decoder.n_embd": 48, "decoder.n_layer": 2,
        "decoder.n_head": 6, "decoder.n_kv_head": 2, "decoder.mlp_hidden": 96, "decoder.max_seq_len": 256})
    cfg.image_token_id, cfg.eos_token_id, cfg.pad_token_id = 255, 254, 253
    return cfg


def _qk_norm_gpt():
    return tiny_config(**{"decoder.qk_norm": 10.0})


def _qk_norm_llama():
    cfg = _small_llama()
    cfg.decoder.qk_norm = 10.0
    return cfg


def _held_gpt():
    return tiny_config(**{"decoder.qk_norm": 10.0, "decoder.hold_image_tokens": True})


def _held_llama():
    cfg = _small_llama()
    cfg.decoder.hold_image_tokens = True
    cfg.decoder.rewritten_image_layers = 1        # the first of its two layers rewrites them
    return cfg


CONFIGS = [tiny_config, _small_llama, _qk_norm_gpt, _qk_norm_llama, _held_gpt, _held_llama]
CONFIG_IDS = ["gpt", "llama", "gpt-qk-norm", "llama-qk-norm", "gpt-held-images", "llama-held-images"]


def _decoder_holding_by_hand(decoder, x, position_ids, held, mask=None, rewritten_layers=0):
    """The spec of DecoderConfig.hold_image_tokens, spelled out: every block runs on every position as usual, then
    the held positions get their input back (so later blocks read their keys and values from the input)."""
    from nanovlm.model.layers import rope_cos_sin
    rope = None
    if decoder.pos_emb is not None:
        x = x + decoder.pos_emb(position_ids)
    else:
        rope = rope_cos_sin(position_ids, decoder.cfg.head_dim, decoder.cfg.rope_theta, x.dtype)
    for i, block in enumerate(decoder.blocks):
        out = block(x, rope=rope, mask=mask)
        x = out if i < rewritten_layers else torch.where(held[..., None], x, out)
    return decoder.norm(x)


@pytest.mark.parametrize("make_cfg", [_held_gpt, _held_llama], ids=["gpt", "llama-gqa"])
@pytest.mark.parametrize("layout", ["prefix", "scattered", "uneven", "left-padded"])
def test_held_image_tokens_lend_keys_and_values_but_keep_their_input(make_cfg, layout):
    """The decoder's fast path (queries, attention output and MLP for the rewritten positions only) gives the
    numbers and the gradients of running every block on every position and putting the held ones back."""
    from nanovlm.model.vlm import prefill_mask
    torch.manual_seed(0)
    cfg = make_cfg()
    cfg.decoder.rewritten_image_layers = 0
    decoder = VisionLanguageModel(cfg).decoder
    with torch.no_grad():                            # weights far from their small start, so every block matters
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    B, T, C = 3, 14, cfg.decoder.n_embd
    held = torch.zeros(B, T, dtype=torch.bool)
    mask = None
    if layout == "prefix":
        held[:, :5] = True
    elif layout == "scattered":                      # the same count per row, at different places
        for row, start in enumerate((0, 3, 6)):
            held[row, start:start + 4] = True
    elif layout == "uneven":                         # different counts per row: the slower path
        held[0, :2], held[1, 4:9], held[2, 7] = True, True, True
    else:                                            # left padding before the image, as generate() batches prompts
        attention = torch.ones(B, T, dtype=torch.long)
        attention[1, :3], attention[2, :6] = 0, 0
        for row, pad in enumerate((0, 3, 6)):
            held[row, pad:pad + 4] = True
        mask = prefill_mask(attention)
    position_ids = torch.arange(T).expand(B, T)
    x = torch.randn(B, T, C, requires_grad=True)
    fast = decoder(x, position_ids, mask=mask, return_hidden=True, held=held)
    by_hand = _decoder_holding_by_hand(decoder, x, position_ids, held, mask)
    torch.testing.assert_close(fast, by_hand, atol=1e-5, rtol=1e-5)
    # the held positions are the input, normalised; the others differ from a decoder that rewrites everything
    inputs = x + decoder.pos_emb(position_ids) if decoder.pos_emb is not None else x
    torch.testing.assert_close(fast[held], decoder.norm(inputs)[held], atol=1e-5, rtol=1e-5)
    rewriting_all = decoder(x, position_ids, mask=mask, return_hidden=True)
    assert not torch.allclose(fast[~held], rewriting_all[~held], atol=1e-3)
    # the first layer rewriting them, the later ones holding what it made
    decoder.cfg.rewritten_image_layers = 1
    one_rewrite = decoder(x, position_ids, mask=mask, return_hidden=True, held=held)
    torch.testing.assert_close(one_rewrite, _decoder_holding_by_hand(decoder, x, position_ids, held, mask, 1),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(one_rewrite[held], fast[held], atol=1e-3)
    decoder.cfg.rewritten_image_layers = 0
    weights = list(decoder.parameters())
    fast_grads = torch.autograd.grad(fast[~held].square().sum(), [x] + weights, allow_unused=True)
    hand_grads = torch.autograd.grad(by_hand[~held].square().sum(), [x] + weights, allow_unused=True)
    for a, b in zip(fast_grads, hand_grads):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_held_image_tokens_through_the_model_and_a_training_step():
    """VisionLanguageModel holds exactly its image placeholders (not the text), and a training step through the fast
    path reaches every trainable part: projector, vision encoder, decoder."""
    cfg = _held_gpt()
    model = VisionLanguageModel(cfg)
    ids, images = _batch(cfg, B=2)
    assert torch.equal(model.held_positions(ids), ids == cfg.image_token_id)
    labels = ids.clone()
    labels[ids == cfg.image_token_id] = -100
    _, loss = model(ids, images, labels=labels, return_logits=False)
    loss.backward()
    for part in (model.projector, model.vision, model.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    plain = VisionLanguageModel(tiny_config(**{"decoder.qk_norm": 10.0}))
    plain.load_state_dict(model.state_dict())
    assert plain.held_positions(ids) is None
    assert not torch.allclose(plain(ids, images)[0], model(ids, images)[0], atol=1e-4)


@pytest.mark.parametrize("make_cfg", CONFIGS, ids=CONFIG_IDS)
def test_cached_generation_matches_full_recomputation(make_cfg):
    cfg = make_cfg()
    model = VisionLanguageModel(cfg).eval()
    ids, images = _batch(cfg, B=2)
    new, step_logits = model.generate(ids, images, max_new_tokens=8, eos_token_id=-1, return_logits=True)
    assert new.shape == (2, 8)
    for step in range(8):
        full = torch.cat([ids, new[:, :step]], dim=1)
        logits, _ = model(full, images)
        torch.testing.assert_close(step_logits[:, step], logits[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make_cfg", CONFIGS, ids=CONFIG_IDS)
def test_batched_left_padded_generation_matches_one_by_one(make_cfg):
    cfg = make_cfg()
    model = VisionLanguageModel(cfg).eval()
    n_img = cfg.image_tokens_per_image
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    prompts = [torch.randint(0, cfg.decoder.vocab_size - 3, (n,)) for n in (3, 7, 5)]
    prompts = [torch.cat([torch.full((n_img,), cfg.image_token_id), p]) for p in prompts]
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), cfg.pad_token_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batched, batched_logits = model.generate(ids, images, attention_mask=mask, max_new_tokens=6, eos_token_id=-1,
                                             return_logits=True)
    for i, p in enumerate(prompts):
        single, single_logits = model.generate(p[None], images[i:i + 1], max_new_tokens=6, eos_token_id=-1,
                                               return_logits=True)
        assert torch.equal(batched[i], single[0])
        torch.testing.assert_close(batched_logits[i], single_logits[0], atol=1e-4, rtol=1e-4)


def test_greedy_stops_at_eos_per_sequence():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg).eval()
    ids, images = _batch(cfg, B=2)
    free = model.generate(ids, images, max_new_tokens=6, eos_token_id=-1)
    # declare one of sequence 0's tokens the EOS: each sequence must stop at its first occurrence, pad after
    eos = int(free[0, 2])
    out = model.generate(ids, images, max_new_tokens=6, eos_token_id=eos)
    stops = []
    for i in range(2):
        hits = (free[i] == eos).nonzero()
        stop = int(hits[0]) if len(hits) else 5
        stops.append(stop)
        assert torch.equal(out[i, : stop + 1], free[i, : stop + 1])
        assert (out[i, stop + 1:] == cfg.pad_token_id).all()
    # generation returns as soon as every sequence has ended
    assert out.shape[1] == max(stops) + 1


def test_sampling_is_seeded_and_varied():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg).eval()
    ids, images = _batch(cfg, B=1)
    kwargs = dict(max_new_tokens=10, temperature=1.5, eos_token_id=-1)
    a = model.generate(ids, images, seed=1, **kwargs)
    b = model.generate(ids, images, seed=1, **kwargs)
    c = model.generate(ids, images, seed=2, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_functions():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert sampling.greedy(logits).item() == 0
    assert torch.isinf(sampling.apply_top_k(logits, 2)[0, 2:]).all()
    assert not torch.isinf(sampling.apply_top_k(logits, 2)[0, :2]).any()
    probs = logits.softmax(-1)[0]                         # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(sampling.apply_top_p(logits, 0.8))[0]
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.8 <= probs[:2].sum()
    assert (~torch.isinf(sampling.apply_top_p(logits, 0.1))).sum() == 1     # never empty
    p = sampling.logits_to_probs(logits, temperature=1.0, top_k=3)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert p[0, 3:].sum() == 0
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sampling.sample(logits, 1.0, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}


def test_bf16_weights_generate():
    cfg = _small_llama()
    model = VisionLanguageModel(cfg).eval().to(torch.bfloat16)
    ids, images = _batch(cfg, B=1)
    out = model.generate(ids, images.to(torch.bfloat16), max_new_tokens=4, eos_token_id=-1)
    assert out.shape == (1, 4)


def test_projector_output_norm_keeps_image_tokens_at_unit_scale():
    cfg = tiny_config(**{"projector.output_norm": True})
    model = VisionLanguageModel(cfg).eval()
    with torch.no_grad():
        for p in model.projector.proj.parameters():
            p.mul_(1000.0)                     # a projector whose outputs have grown huge
        tokens = model.encode_images(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, cfg.image_tokens_per_image, cfg.decoder.n_embd)
    torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(2, cfg.image_tokens_per_image), atol=1e-2, rtol=0)


def test_overrides_rederive_dependent_fields():
    cfg = from_name("nanovlm-222m").with_overrides({"decoder.n_embd": 48, "decoder.n_head": 6})
    assert cfg.decoder.head_dim == 8 and cfg.decoder.n_kv_head == 3       # GQA setting kept, head size derived
    cfg = from_name("tiny").with_overrides({"decoder.n_head": 4})
    assert cfg.decoder.n_kv_head == 4 and cfg.decoder.head_dim == 8
    cfg = from_name("nanovlm-222m").with_overrides({"decoder.n_embd": 48, "decoder.head_dim": 16})
    assert cfg.decoder.head_dim == 16



@pytest.mark.parametrize("stem", ["linear", "conv2", "convnet"])
def test_patch_stems_give_one_token_per_patch(stem):
    cfg = tiny_config(**{"vision.patch_stem": stem, "vision.stem_channels": 16})
    model = VisionLanguageModel(cfg)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model.vision.patch_stem(x)
    assert out.shape == (2, cfg.vision.num_patches, cfg.vision.width)
    out[0, 0].sum().backward()
    assert x.grad[0, :, :8, :8].abs().sum() > 0 and x.grad[1].abs().sum() == 0   # its own pixels, its own image
    if stem != "convnet":   # linear stems see their patch only (the convnet's GroupNorm sees the whole picture)
        assert x.grad[0, :, 8:, :].abs().sum() == 0 and x.grad[0, :, :, 8:].abs().sum() == 0


def test_conv2_stem_as_matrix_products_equals_its_two_convs():
    """The paper's stem runs its stride == kernel convs as products over cells: the convs' own numbers."""
    torch.manual_seed(0)
    cfg = tiny_config(**{"vision.patch_stem": "conv2", "vision.stem_channels": 16, "vision.image_size": 48})
    stem = VisionLanguageModel(cfg).vision.patch_stem
    x = torch.randn(3, 3, 48, 48)
    by_conv = stem.conv2(stem.conv1(x)).flatten(2).transpose(1, 2)
    expected = stem.proj(torch.relu(stem.norm(by_conv)))
    torch.testing.assert_close(stem(x), expected, atol=1e-5, rtol=1e-5)


def test_resnet_stem_sees_past_its_patch_and_keeps_images_apart_in_eval():
    cfg = tiny_config(**{"vision.patch_stem": "resnet", "vision.stem_channels": 16})
    stem = VisionLanguageModel(cfg).vision.patch_stem.eval()     # eval: batch norm uses its running statistics
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = stem(x)
    assert out.shape == (2, cfg.vision.num_patches, cfg.vision.width)
    out[0, 0].sum().backward()
    assert x.grad[1].abs().sum() == 0                                    # no batch statistics across images
    assert x.grad[0, :, 16:24, :8].abs().sum() > 0                        # a receptive field of 43 px, not 15


def test_resnet_stem_batch_statistics_are_saved_and_restored(tmp_path):
    cfg = tiny_config(**{"vision.patch_stem": "resnet", "vision.stem_channels": 16})
    model = VisionLanguageModel(cfg)
    model.vision(torch.rand(4, 3, 32, 32) * 3)                 # train mode: moves running_mean/var off 0/1
    model.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    running = {k: v for k, v in model.state_dict().items() if "running_" in k}
    assert running and all(not torch.equal(v, torch.zeros_like(v)) for k, v in running.items() if "mean" in k)
    for key, value in running.items():
        assert torch.equal(again.state_dict()[key], value), key
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again.vision(images), model.eval().vision(images))


def test_sincos_positions_are_fixed_2d_and_rebuilt_on_load(tmp_path):
    from nanovlm.model.vision import sincos_2d
    table = sincos_2d(rows=4, cols=4, width=8, cls=True)[0]            # CLS row, then 16 patches row by row
    assert table.shape == (17, 8) and torch.equal(table[0], torch.zeros(8))
    row, col = torch.arange(16) // 4, torch.arange(16) % 4
    # channels 0-3 depend on the row only, 4-7 on the column only; frequency 1 first: sin(r), ..., cos(r), ...
    torch.testing.assert_close(table[1:, 0], torch.sin(row.float()))
    torch.testing.assert_close(table[1:, 2], torch.cos(row.float()))
    torch.testing.assert_close(table[1:, 4], torch.sin(col.float()))
    assert len({tuple(r.tolist()) for r in table[1:]}) == 16      # every patch has its own code

    cfg = tiny_config(**{"vision.position": "sincos"})
    model = VisionLanguageModel(cfg)
    assert "vision.position" not in model.state_dict()     # neither trained nor saved: made from the config
    vision, images = model.vision.eval(), torch.rand(2, 3, 32, 32)
    x = torch.cat([vision.cls.expand(2, -1, -1), vision.patch_stem(images)], dim=1)   # tiny has a CLS token
    x = x + sincos_2d(*cfg.vision.grid, cfg.vision.width, cls=True)
    for block in vision.blocks:
        x = block(x)
    torch.testing.assert_close(vision(images), vision.norm(x))
    model.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    assert again.cfg.vision.position == "sincos"
    torch.testing.assert_close(again.vision(images), vision(images), rtol=0, atol=0)
    assert tiny_config().vision.position == "learned"
    with pytest.raises(ConfigError, match="vision.position must be one of"):
        tiny_config(**{"vision.position": "random"})
    with pytest.raises(ConfigError, match="multiple of 4"):
        tiny_config(**{"vision.position": "sincos", "vision.width": 30, "vision.n_head": 2})


def test_convnet_stem_needs_a_power_of_two_patch():
    with pytest.raises(ConfigError, match="power of two"):
        tiny_config(**{"vision.patch_stem": "convnet", "vision.patch_size": 12, "vision.image_size": 36})


def test_qk_norm_attention_is_temperature_times_cosine():
    from nanovlm.model.layers import Attention
    torch.manual_seed(0)
    attn = Attention(dim=16, n_head=2, n_kv_head=2, head_dim=8, bias=False, qk_norm=5.0)
    with torch.no_grad():
        attn.qk_temperature.copy_(torch.tensor([5.0, 2.0]))
    x = torch.randn(1, 4, 16)
    heads = lambda t: t.view(1, 4, 2, 8).transpose(1, 2)                       # (1, H, T, D)
    q, k, v = heads(attn.q(x)), heads(attn.k(x)), heads(attn.v(x))
    cosine = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-1, -2)
    scores = cosine * torch.tensor([5.0, 2.0]).view(1, 2, 1, 1)
    scores = scores.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
    by_hand = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 4, 16))
    torch.testing.assert_close(attn(x, causal=True), by_hand, atol=1e-5, rtol=1e-5)
    # the temperature is learned: it gets a gradient, and it is a 1-D tensor, so weight decay leaves it alone
    attn(x, causal=True).sum().backward()
    assert attn.qk_temperature.grad is not None and attn.qk_temperature.grad.abs().sum() > 0


def test_qk_norm_is_off_by_default_and_checked():
    assert all(b.attn.qk_temperature is None for b in VisionLanguageModel(tiny_config()).decoder.blocks)
    with pytest.raises(ConfigError, match="decoder.qk_norm"):
        tiny_config(**{"decoder.qk_norm": -1.0})


def test_cpu_training_attention_runs_in_fp32_under_bf16_autocast():
    """Back-propagated attention on CPU runs out of autocast in fp32 (bf16's backward is 2x slower there); without
    gradients it stays bf16. Either way the output has the values' dtype, so the next layer sees no change."""
    from nanovlm.model.layers import Attention
    torch.manual_seed(0)
    attn = Attention(dim=32, n_head=4, n_kv_head=2, head_dim=8, bias=False)
    x = torch.randn(2, 6, 32)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trained = attn(x, causal=True)
            with torch.no_grad():
                inferred = attn(x, causal=True)
    assert seen == [(torch.float32,) * 3, (torch.bfloat16,) * 3]
    assert trained.dtype == inferred.dtype == torch.bfloat16
    torch.testing.assert_close(trained.float(), attn(x, causal=True), atol=2e-2, rtol=2e-2)   # fp32 reference
    trained.float().sum().backward()
    assert attn.q.weight.grad is not None and attn.q.weight.grad.abs().sum() > 0
