"""Loss masks checked token by token on multi-turn, multi-image chat samples: a Cauldron-style record goes through
the data pipeline (VLMDataset -> collate) and every position's label is checked against an independent reading of
the token sequence: the loss is on each answer and its end-of-turn token, never on image, template or question
tokens."""
import pytest
import torch

from nanovlm.config import from_name
from nanovlm.data.format import write_records
from nanovlm.data.loader import IGNORE_INDEX, VLMDataset, collate
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import CHAT_END, CHAT_START, Tokenizer

from PIL import Image

TURNS = [{"user": "What is in the first picture?", "assistant": "A red ball."},
         {"user": "And how many cars are in the second one?", "assistant": "two"},
         {"user": "Which picture is brighter?", "assistant": "The first one, because it is white."}]


def chat_tokenizer() -> Tokenizer:
    texts = [t[k] for t in TURNS for k in ("user", "assistant")] * 10 + ["user assistant"] * 5
    base = Tokenizer.train(texts, vocab_size=300)
    base.hf.add_special_tokens([CHAT_START, CHAT_END])
    return Tokenizer(base.hf)        # re-wrapped: with <|im_start|>/<|im_end|> it speaks ChatML


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    (folder / "images").mkdir()
    for name, color in (("a", "white"), ("b", "black"), ("c", "red")):
        Image.new("RGB", (16, 16), color).save(folder / "images" / f"{name}.png")
    write_records(folder, [
        {"id": "three-turns-two-images", "images": ["images/a.png", "images/b.png"], "texts": TURNS},
        {"id": "one-turn-three-images", "images": ["images/a.png", "images/b.png", "images/c.png"],
         "texts": TURNS[:1]},
        {"id": "text-only", "images": [], "texts": TURNS[1:]},
    ])
    return folder


def config(fusion: str, tokenizer: Tokenizer):
    cfg = from_name("tiny").with_overrides({"fusion": fusion, "max_images": 3, "vision.image_size": 16})
    return tokenizer.configure(cfg)


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    out, start = [], None
    for i, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("fusion", ["placeholder", "prefix"])
def test_labels_token_by_token(folder, fusion):
    tokenizer = chat_tokenizer() if fusion == "placeholder" else Tokenizer.train(
        [t[k] for t in TURNS for k in ("user", "assistant")] * 10, vocab_size=300)
    cfg = config(fusion, tokenizer)
    dataset = VLMDataset(folder, tokenizer, cfg, split="train")
    end_of_turn = tokenizer.hf.token_to_id(CHAT_END) if fusion == "placeholder" else tokenizer.eos_token_id
    per_image = cfg.image_tokens_per_image
    for index, record in enumerate(dataset.records):
        sample = dataset[index]
        ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
        n_images = len(record["images"])
        assert (sample["images"] is None) == (n_images == 0)
        assert n_images == 0 or sample["images"].shape[0] == n_images
        # the image placeholders: as many as the images need, all together, none trained on
        image_positions = [t for t, i in enumerate(ids) if i == cfg.image_token_id]
        assert len(image_positions) == n_images * per_image
        if image_positions:
            assert image_positions == list(range(image_positions[0], image_positions[0] + len(image_positions)))
            if fusion == "prefix":
                assert image_positions[0] == 0
            else:   # inside the first user turn, after "<|im_start|>user\n"
                assert tokenizer.decode(ids[:image_positions[0]], skip_special_tokens=False) == f"{CHAT_START}user\n"
        # labels[t] is the NEXT token where that token is trained on: check each position
        trained = [False] * len(ids)
        for t, label in enumerate(labels):
            if label != IGNORE_INDEX:
                assert label == ids[t + 1], t
                trained[t + 1] = True
        assert labels[-1] == IGNORE_INDEX
        assert not any(trained[t] for t in image_positions)
        # the trained tokens are exactly the answers, each followed by its end-of-turn token, in order
        spans = runs(trained)
        assert len(spans) == len(record["texts"])
        for (start, end), turn in zip(spans, record["texts"]):
            assert ids[end - 1] == end_of_turn
            assert tokenizer.decode(ids[start:end - 1], skip_special_tokens=False) == turn["assistant"]
        # and everything not trained on reads back as the prompt: template, images and questions
        untrained = tokenizer.decode([i for i, t in zip(ids, trained) if not t and i != cfg.image_token_id],
                                     skip_special_tokens=False)
        for turn in record["texts"]:
            assert turn["user"] in untrained and turn["assistant"] not in untrained
        if fusion == "placeholder":
            assert untrained.count(f"{CHAT_START}assistant\n") == len(record["texts"])


def test_a_collated_multi_image_batch_trains(folder):
    tokenizer = chat_tokenizer()
    cfg = config("placeholder", tokenizer)
    dataset = VLMDataset(folder, tokenizer, cfg, split="train")
    batch = collate([dataset[i] for i in range(len(dataset))], pad_token_id=tokenizer.pad_token_id)
    assert batch["images"].shape[0] == 2 + 3 + 0          # all images of the batch, in reading order
    assert int((batch["input_ids"] == cfg.image_token_id).sum()) == 5 * cfg.image_tokens_per_image
    answer_tokens = sum(len(tokenizer.encode(t["assistant"])) + 1 for r in dataset.records for t in r["texts"])
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == answer_tokens
    model = VisionLanguageModel(cfg)
    _, loss = model(batch["input_ids"], batch["images"], labels=batch["labels"], return_logits=False)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.vision.parameters().__next__().grad is not None   # the images reach the loss
