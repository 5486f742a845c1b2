"""Input pipeline: image tensors, augmentations that keep the text true, labels, padding, sampling."""
import random

import pytest
import torch
from PIL import Image

from nanovlm.data.loader import (IGNORE_INDEX, Augmentation, EpochSampler, VLMDataset, collate,
                                 targets_from_loss_mask)
from nanovlm.data.synth import make_scenes
from nanovlm.data.transforms import augment, normalise_batch, to_pixels, to_tensor
from nanovlm.tokenizer import Tokenizer

from conftest import tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, n=40, style="short", image_size=32, seed=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def tokenizer(scenes):
    from nanovlm.data.format import read_records
    texts = [t["assistant"] for r in read_records(scenes) for t in r["texts"]]
    return Tokenizer.train(texts * 3, vocab_size=400)


def test_to_tensor_resizes_and_normalises():
    cfg = tiny_config().vision
    image = Image.new("RGB", (50, 70), (255, 0, 0))
    x = to_tensor(image, cfg)
    assert x.shape == (3, 32, 32)
    expected_red = (1.0 - cfg.image_mean[0]) / cfg.image_std[0]
    assert torch.allclose(x[0], torch.full((32, 32), expected_red), atol=1e-5)


def test_a_servers_two_step_preparation_gives_to_tensors_numbers():
    """to_pixels (request threads) + normalise_batch (the model's thread, per batch) == to_tensor, bit for bit."""
    cfg = tiny_config().vision
    rng = random.Random(0)
    images = [Image.new("RGB", (rng.randint(8, 90), rng.randint(8, 90)), tuple(rng.randrange(256) for _ in range(3)))
              for _ in range(3)]
    images[0].paste((250, 3, 40), (2, 2, 6, 7))
    batch = normalise_batch(torch.stack([to_pixels(im, cfg) for im in images]), cfg)
    assert torch.equal(batch, torch.stack([to_tensor(im, cfg) for im in images]))


def test_augment_keeps_colours():
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    out = augment(image, random.Random(0), max_rotation=5, jitter=0.1)
    r, g, b = out.getpixel((16, 16))
    assert r > 150 and g < 60 and b < 60, "jitter must not change which colour a thing is"


def test_labels_are_next_tokens_on_answer_only():
    ids = [5, 6, 7, 8, 9]
    loss = [False, False, True, True, True]
    assert targets_from_loss_mask(ids, loss).tolist() == [IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX]


def test_dataset_item_and_collate(scenes, tokenizer):
    cfg = tokenizer.configure(tiny_config())
    ds = VLMDataset(scenes, tokenizer, cfg, split="train")
    item = ds[0]
    assert item["images"].shape == (1, 3, 32, 32)
    n_img = cfg.image_tokens_per_image
    assert item["input_ids"][:n_img].tolist() == [cfg.image_token_id] * n_img
    answer = [int(t) for t in item["labels"] if t != IGNORE_INDEX]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer) == ds.records[0]["texts"][0]["assistant"]
    batch = collate([ds[0], ds[1], ds[2]], pad_token_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape and batch["images"].shape[0] == 3
    shortest = min(len(ds[i]["input_ids"]) for i in range(3))
    assert (batch["labels"][:, shortest - 1:] == IGNORE_INDEX).any()


def test_flip_swaps_left_and_right_in_text_and_image(scenes, tokenizer):
    cfg = tokenizer.configure(tiny_config())
    plain = VLMDataset(scenes, tokenizer, cfg, split="train")
    flipping = VLMDataset(scenes, tokenizer, cfg, split="train",
                          augmentation=Augmentation(max_rotation=0, jitter=0, flip=True), seed=3)
    index = next(i for i, r in enumerate(plain.records) if " left" in r["texts"][0]["assistant"])
    for epoch in range(8):    # some epoch flips this sample
        item = flipping[(index, epoch)]
        if not torch.equal(item["images"], plain[index]["images"]):
            torch.testing.assert_close(item["images"], plain[index]["images"].flip(-1))
            text = tokenizer.decode([t for t in item["labels"].tolist() if t != IGNORE_INDEX])
            assert " right" in text and text.count(" left") == plain.records[index]["texts"][0]["assistant"].count(" right")
            return
    pytest.fail("no epoch flipped the sample")


def test_augmentation_is_a_function_of_seed_epoch_index(scenes, tokenizer):
    cfg = tokenizer.configure(tiny_config())
    ds = VLMDataset(scenes, tokenizer, cfg, split="train", augmentation=Augmentation(), seed=5)
    assert torch.equal(ds[(3, 1)]["images"], ds[(3, 1)]["images"])
    assert not torch.equal(ds[(3, 1)]["images"], ds[(3, 2)]["images"])


def test_epoch_sampler_shards_resumes_and_reshuffles():
    full = EpochSampler(20, batch_size=4, seed=0)
    it = iter(full)
    first_two_epochs = [next(it) for _ in range(40)]
    assert sorted(i for i, e in first_two_epochs if e == 0) == list(range(20))
    assert [i for i, e in first_two_epochs if e == 0] != [i for i, e in first_two_epochs if e == 1]
    resumed = iter(EpochSampler(20, batch_size=4, seed=0, start_epoch=0, start_batch=3))
    assert [next(resumed) for _ in range(28)] == first_two_epochs[12:40]
    ranks = [EpochSampler(21, batch_size=2, seed=0, rank=r, world_size=2).epoch_indices(0) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 10 and not set(ranks[0]) & set(ranks[1])


def test_grouping_by_length_keeps_every_sample_and_cuts_the_padding():
    lengths = [random.Random(i).randint(10, 200) for i in range(1000)]
    plain = EpochSampler(1000, batch_size=8, seed=0)
    grouped = EpochSampler(1000, batch_size=8, seed=0, lengths=lengths)

    def padded_positions(order):        # what the steps compute: every batch padded to its longest sample
        return sum(8 * max(lengths[i] for i in order[b:b + 8]) for b in range(0, len(order), 8))
    for epoch in (0, 1):
        order = grouped.epoch_indices(epoch)
        assert sorted(order) == sorted(plain.epoch_indices(epoch))      # the same samples, each once
        assert padded_positions(order) < 0.8 * padded_positions(plain.epoch_indices(epoch))
    assert grouped.epoch_indices(0) != grouped.epoch_indices(1)
    assert grouped.epoch_indices(0) == EpochSampler(1000, batch_size=8, seed=0, lengths=lengths).epoch_indices(0)
    # the batches come in random order, not shortest first
    order = grouped.epoch_indices(0)
    longest = [max(lengths[i] for i in order[b:b + 8]) for b in range(0, len(order), 8)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    it = iter(grouped)
    first = [next(it) for _ in range(1000 // 8 * 8 + 40)]
    resumed = iter(EpochSampler(1000, batch_size=8, seed=0, lengths=lengths, start_batch=5))
    assert [next(resumed) for _ in range(len(first) - 40)] == first[40:]
    assert EpochSampler(1000, batch_size=8, shuffle=False, lengths=lengths).epoch_indices(0) == list(range(1000))
    with pytest.raises(ValueError, match="lengths has 3 entries for 1000"):
        EpochSampler(1000, batch_size=8, lengths=[1, 2, 3])


def test_dataset_lengths_are_the_samples_lengths(scenes, tokenizer):
    cfg = tokenizer.configure(tiny_config())
    ds = VLMDataset(scenes, tokenizer, cfg, split="train")
    assert ds.lengths() == [len(ds[(i, 0)]["input_ids"]) for i in range(len(ds))]
