"""Packing (pack=true): several samples per row with block-diagonal attention and positions restarting per sample
give exactly the unpacked loss."""
import json

import pytest
import torch

from nanovlm.config import from_name
from nanovlm.data.loader import IGNORE_INDEX, VLMDataset, collate, collate_packed
from nanovlm.data.synth import make_scenes
from nanovlm.model.vlm import VisionLanguageModel, packed_positions_and_mask
from nanovlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def vqa_scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack")
    make_scenes(folder, n=24, style="vqa", image_size=32, seed=3, progress=False)
    return folder


def test_positions_restart_and_attention_stays_inside_each_sample():
    segments = torch.tensor([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    positions, mask = packed_positions_and_mask(segments)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1], list(range(7))]
    assert mask.shape == (2, 1, 7, 7)
    row = mask[0, 0].int().tolist()
    assert row[3] == [0, 0, 0, 1, 0, 0, 0] and row[4] == [0, 0, 0, 1, 1, 0, 0]   # sample 2 sees only itself
    assert row[2] == [1, 1, 1, 0, 0, 0, 0] and row[6] == [0, 0, 0, 0, 0, 1, 1]   # padding sees padding only
    assert torch.equal(mask[1, 0], torch.ones(7, 7, dtype=torch.bool).tril())


@pytest.mark.parametrize("flavour", ["gpt", "llama"])
def test_packed_and_unpacked_losses_are_equal(vqa_scenes, flavour):
    records = [json.loads(line) for line in (vqa_scenes / "records.jsonl").read_text().splitlines()]
    tokenizer = Tokenizer.train([t[k] for r in records for t in r["texts"] for k in ("user", "assistant")],
                                vocab_size=400)
    overrides = {"decoder.max_seq_len": 512}
    if flavour == "llama":
        overrides.update({"decoder.flavour": "llama", "decoder.n_kv_head": 1})
    cfg = tokenizer.configure(from_name("tiny", overrides))
    dataset = VLMDataset(vqa_scenes, tokenizer, cfg, split=None)
    samples = [dataset[i] for i in range(len(dataset))]
    plain = collate(samples, pad_token_id=tokenizer.pad_token_id)
    max_len = max(len(s["input_ids"]) for s in samples) * 3
    packed = collate_packed(samples, pad_token_id=tokenizer.pad_token_id, max_len=max_len)
    # several samples share a row, every token of every sample is kept once, the images keep the reading order
    assert packed["input_ids"].shape[0] < len(samples) // 2 and packed["input_ids"].shape[1] <= max_len
    assert int((packed["segment_ids"] > 0).sum()) == sum(len(s["input_ids"]) for s in samples)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((plain["labels"] != IGNORE_INDEX).sum())
    order = {sample_id: k for k, sample_id in enumerate(plain["ids"])}
    assert torch.equal(packed["images"], plain["images"][[order[i] for i in packed["ids"]]])

    model = VisionLanguageModel(cfg).eval()
    with torch.no_grad():
        _, unpacked_loss = model(plain["input_ids"], plain["images"], labels=plain["labels"])
        _, packed_loss = model(packed["input_ids"], packed["images"], labels=packed["labels"],
                               segment_ids=packed["segment_ids"], return_logits=False)
        # without the segment mask the samples would read each other: a different loss
        _, leaky_loss = model(packed["input_ids"], packed["images"], labels=packed["labels"])
    packed_error = abs(packed_loss.item() - unpacked_loss.item())
    assert packed_error < 1e-5 * unpacked_loss.item()
    assert abs(leaky_loss.item() - unpacked_loss.item()) > 10 * packed_error + 1e-5


def test_training_with_pack_runs(vqa_scenes, tmp_path):
    from nanovlm.train import TrainConfig, train

    summary = train(TrainConfig(preset="tiny", data=str(vqa_scenes), out=str(tmp_path / "run"), steps=2,
                                batch_size=8, warmup_steps=1, eval_every=2, eval_batches=1, threads=1, pack=True,
                                progress=False, model={"decoder.max_seq_len": 512}))
    assert summary["steps"] == 2 and summary["final_loss"] > 0
