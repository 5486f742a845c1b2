"""The max read-out loss (nanovlm.max_readout): the answers' words from the channel-wise max of the encoder's
patch tokens, through the decoder's word embeddings."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from nanovlm.max_readout import max_readout_loss, readout_targets
from nanovlm.model.vlm import VisionLanguageModel

from conftest import tiny_config


def batch(cfg, n=4, seed=0):
    """n samples: image tokens, a 3-token question, a one-token answer and the end of turn."""
    g = torch.Generator().manual_seed(seed)
    n_img = cfg.image_tokens_per_image
    ids = torch.randint(10, 100, (n, n_img + 5), generator=g)
    ids[:, :n_img] = cfg.image_token_id
    ids[:, -2] = torch.arange(n) + 200            # the answer: a different word per sample
    ids[:, -1] = cfg.eos_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -3:-1] = ids[:, -2:]                # next-token targets: the answer and the end of turn
    return ids, labels, torch.randn(n, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)


def logits_by_hand(model, image, pool="channels"):
    """One picture's read-out logits the plain way: its patch tokens (the CLS token left out), pooled."""
    patches = model.vision(image[None])[0, 1:]                              # (P, width)
    if pool == "channels":
        return patches.max(0).values @ model.decoder.tok_emb.weight.T       # each channel's max
    return (patches @ model.decoder.tok_emb.weight.T).max(0).values          # each word's best patch


@pytest.mark.parametrize("pool", ["channels", "tokens"])
def test_loss_is_the_answer_words_read_from_the_max_of_the_patch_tokens(pool):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    _, labels, images = batch(cfg)
    expected = [F.cross_entropy(logits_by_hand(model, images[i], pool)[None], torch.tensor([200 + i]))
                for i in range(len(images))]                                  # not the end of turn
    loss = max_readout_loss(model, images, labels, pool=pool)
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)
    if pool == "tokens":
        assert not torch.allclose(loss, max_readout_loss(model, images, labels), atol=1e-3)


def test_conversation_targets_add_the_answer_words_a_question_names_once_per_sample():
    eos = 9
    # sample 0: "what color is STAR ? -> RED <eos>"; sample 1: "what shape is RED ? -> STAR <eos>" (5 = star, 6 = red)
    ids = torch.tensor([[1, 2, 3, 5, 4, 6, eos], [1, 7, 3, 6, 4, 5, eos]])
    labels = torch.full_like(ids, -100)
    labels[:, 4:6] = ids[:, 5:7]                  # next-token targets: the answer and the end of turn
    rows, words = readout_targets(ids, labels, eos, "answers")
    assert list(zip(rows.tolist(), words.tolist())) == [(0, 6), (1, 5)]
    rows, words = readout_targets(ids, labels, eos, "conversation")
    assert sorted(zip(rows.tolist(), words.tolist())) == [(0, 5), (0, 6), (1, 5), (1, 6)]   # each word once
    # a question word that is nobody's answer ("color" = 2, "shape" = 7) is not a target
    ids[1, 3] = 8
    rows, words = readout_targets(ids, labels, eos, "conversation")
    assert sorted(zip(rows.tolist(), words.tolist())) == [(0, 5), (0, 6), (1, 5)]
    with pytest.raises(ValueError, match="needs the input ids"):
        readout_targets(None, labels, eos, "conversation")


def test_conversation_loss_is_the_mean_over_those_words():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    ids, labels, images = batch(cfg, n=2)
    ids[0, -4] = 201                              # sample 0's question names sample 1's answer
    expected = []
    for i, words in ((0, (200, 201)), (1, (201,))):
        logits = logits_by_hand(model, images[i])
        expected += [F.cross_entropy(logits[None], torch.tensor([w])) for w in words]
    loss = max_readout_loss(model, images, labels, input_ids=ids, words="conversation")
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_a_batch_without_answers_gives_zero_and_still_backpropagates():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    _, labels, images = batch(cfg)
    labels[labels != cfg.eos_token_id] = -100
    loss = max_readout_loss(model, images, labels)
    loss.backward()
    assert loss.item() == 0.0


def test_training_on_it_teaches_the_encoder_and_leaves_the_decoder_blocks_alone():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    _, labels, images = batch(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = max_readout_loss(model, images, labels).item()
    for _ in range(30):
        optimizer.zero_grad()
        max_readout_loss(model, images, labels).backward()
        optimizer.step()
    assert max_readout_loss(model, images, labels).item() < 0.5 * first
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("vision.") for k in changed) and "decoder.tok_emb.weight" in changed
    assert not any(k.startswith(("decoder.blocks.", "projector.")) for k in changed)


def test_one_picture_per_sample():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    _, labels, images = batch(cfg)
    with pytest.raises(ValueError, match="one picture per sample"):
        max_readout_loss(model, images[:2], labels)


def test_train_step_adds_it_to_the_language_model_loss():
    from nanovlm.train import Runtime, TrainConfig, train_step

    cfg = tiny_config()
    losses = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = VisionLanguageModel(cfg)
        ids, labels, images = batch(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        tcfg = TrainConfig(steps=10, max_readout_weight=weight, precision="fp32", grad_clip=0)
        loss, _ = train_step(model, optimizer, scaler, iter([{"input_ids": ids, "labels": labels, "images": images}]),
                             tcfg, Runtime())
        losses.append(loss)
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg)
    _, labels, images = batch(cfg)
    assert losses[1] - losses[0] == pytest.approx(max_readout_loss(model, images, labels).item(), abs=1e-4)


def test_train_step_runs_the_vision_encoder_once():
    """The read-out reuses the tokens of the language-model forward: one encoder pass per step, not two."""
    from nanovlm.train import Runtime, TrainConfig, train_step

    cfg = tiny_config()
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg)
    calls = []
    model.vision.register_forward_hook(lambda *args: calls.append(1))
    ids, labels, images = batch(cfg)
    tcfg = TrainConfig(steps=10, max_readout_weight=1.0, precision="fp32", grad_clip=0)
    train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.amp.GradScaler("cpu", enabled=False),
               iter([{"input_ids": ids, "labels": labels, "images": images}]), tcfg, Runtime())
    assert len(calls) == 1


def test_cli_training_with_it_end_to_end(tmp_path, small_scenes):
    from nanovlm import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--data", str(small_scenes), "--out", str(out), "--steps", "2",
                     "--batch-size", "4", "--quiet", "--threads", "1", "--set", "eval_every=2", "--set",
                     "eval_batches=1", "--set", "max_readout_weight=1", "--set", "warmup_steps=0"]) == 0
    assert json.loads((out / "train_config.json").read_text())["max_readout_weight"] == 1.0


def test_read_from_the_projector_teaches_the_image_tokens_of_a_frozen_cached_encoder():
    """max_readout_from=projector: the words are read from the image tokens the decoder reads (the projector's
    output, no width match needed); with a frozen encoder whose outputs come from the cache it adds exactly that
    loss to the step, and its gradient reaches the projector, not the frozen encoder."""
    from nanovlm.train import Runtime, TrainConfig, train_step
    from nanovlm.vision_cache import VisionCache

    cfg = tiny_config(**{"decoder.n_embd": 48})                            # vision width 32: no match needed
    ids, labels, images = batch(cfg)
    keys = [f"picture-{i}" for i in range(len(images))]
    losses, grads = [], []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = VisionLanguageModel(cfg)
        model.vision.requires_grad_(False)
        cache = VisionCache(model.vision, lambda key: images[keys.index(key)], torch.device("cpu"))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        tcfg = TrainConfig(steps=10, max_readout_weight=weight, max_readout_from="projector", max_readout_pool="tokens",
                           freeze=["vision"], cache_vision=True, precision="fp32", grad_clip=0)
        step = {"input_ids": ids, "labels": labels, "images": None, "picture_keys": keys}
        loss, _ = train_step(model, optimizer, scaler, iter([step]), tcfg, Runtime(), vision_cache=cache)
        losses.append(loss)
        grads.append(model.projector.proj.weight.grad.clone())
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg).eval()
    tokens = model.projector(model.vision(images))                           # (B, image tokens, n_embd)
    by_hand = torch.stack([F.cross_entropy((tokens[i] @ model.decoder.tok_emb.weight.T).max(0).values[None],
                                           torch.tensor([200 + i])) for i in range(len(images))]).mean()
    assert losses[1] - losses[0] == pytest.approx(by_hand.item(), abs=1e-4)
    assert not torch.allclose(grads[0], grads[1])                           # the read-out moved the projector
