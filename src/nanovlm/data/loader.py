"""From a dataset folder to training batches: records -> (images, token ids, labels) -> padded batches.

Randomness (shuffling, augmentation) is a pure function of (seed, epoch, index), so a run resumed from a
checkpoint, or split across DDP ranks and DataLoader workers, sees exactly the samples it would have seen."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from ..config import VLMConfig
from ..images import DEFAULT_MAX_PIXELS
from ..tokenizer import Tokenizer
from . import format as fmt
from .synth import flip_text_left_right
from .transforms import augment, hflip, to_tensor

IGNORE_INDEX = -100


@dataclass
class Augmentation:
    max_rotation: float = 5.0     # degrees
    jitter: float = 0.1           # brightness / contrast factor range
    flip: bool = True             # horizontal flip with left <-> right swapped in the text

    @classmethod
    def flips_only(cls) -> "Augmentation":
        """What a cache of encoder outputs allows: each picture is seen as is or mirrored, so two outputs per
        picture cover every visit (rotation and colour jitter would give new pixels at each visit)."""
        return cls(max_rotation=0.0, jitter=0.0, flip=True)

    @property
    def changes_pixels(self) -> bool:
        return self.max_rotation > 0 or self.jitter > 0


class VLMDataset(Dataset):
    """Items are (index, epoch) pairs from EpochSampler; __getitem__ returns one tokenised, augmented sample.

    picture_keys=True (training with cache_vision=true): samples carry "picture_keys" ("images/a.png" or
    "images/a.png|flipped", one per image) instead of decoded pictures; picture(key) decodes one on demand, so
    the pictures whose encoder outputs are cached are never read again."""

    def __init__(self, folder, tokenizer: Tokenizer, cfg: VLMConfig, split: str | None = "train",
                 augmentation: Augmentation | None = None, seed: int = 0, max_len: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, picture_keys: bool = False):
        if picture_keys and augmentation and augmentation.changes_pixels:
            raise ValueError("picture_keys needs an augmentation without rotation or jitter (Augmentation.flips_only)")
        self.picture_keys = picture_keys
        self.folder, self.max_pixels = folder, max_pixels
        self.records = fmt.read_records(folder, split=split, max_images=cfg.max_images)
        if not self.records:
            raise fmt.DatasetFormatError(f"{folder}: no records in split {split!r}; check the 'split' fields "
                                         f"or make the data with `nanovlm data scenes`")
        self.tokenizer, self.cfg = tokenizer, cfg
        self.augmentation, self.seed = augmentation, seed
        self.max_len = max_len or cfg.decoder.max_seq_len

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        record = self.records[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        texts = record["texts"]
        images = []
        flip = False
        if self.augmentation and self.augmentation.flip:
            flip = rng.random() < 0.5      # one decision per sample: every image and every text flip together
        for path in record["images"] if not self.picture_keys else ():
            # big pictures are reduced while decoding, so augmentation never runs on megapixels
            image = fmt.load_image(self.folder, path, self.max_pixels, min_size=self.cfg.vision.image_size)
            if self.augmentation:
                image = augment(image, rng, self.augmentation.max_rotation, self.augmentation.jitter)
            if flip:
                image = hflip(image)
            images.append(to_tensor(image, self.cfg.vision))
        if flip:
            texts = [{k: flip_text_left_right(v) for k, v in t.items()} for t in texts]
        n_image_tokens = len(record["images"]) * self.cfg.image_tokens_per_image
        ids, loss_mask = self.tokenizer.encode_conversation(texts, n_image_tokens, fusion=self.cfg.fusion)
        if len(ids) > self.max_len:
            raise fmt.DatasetFormatError(
                f"{self.folder}: record {record['id']!r} is {len(ids)} tokens long, more than the decoder's "
                f"max_seq_len {self.max_len}; shorten its texts or raise decoder.max_seq_len")
        sample = {"input_ids": torch.tensor(ids), "labels": targets_from_loss_mask(ids, loss_mask),
                  "images": torch.stack(images) if images else None, "id": record["id"]}
        if self.picture_keys:
            sample["picture_keys"] = [path + FLIPPED * flip for path in record["images"]]
        return sample

    def lengths(self) -> list[int]:
        """Each record's length in tokens as __getitem__ makes it (before any left/right flip of the text)."""
        per_image = self.cfg.image_tokens_per_image
        return [len(self.tokenizer.encode_conversation(r["texts"], len(r["images"]) * per_image,
                                                       fusion=self.cfg.fusion)[0]) for r in self.records]

    def picture_paths(self) -> list[str]:
        """Every distinct picture of the split, in the order the records first name them."""
        return list(dict.fromkeys(path for record in self.records for path in record["images"]))

    def picture(self, key: str) -> torch.Tensor:
        """One picture named by a picture key, decoded as __getitem__ would: (3, H, W)."""
        path, flipped = key.removesuffix(FLIPPED), key.endswith(FLIPPED)
        image = fmt.load_image(self.folder, path, self.max_pixels, min_size=self.cfg.vision.image_size)
        return to_tensor(hflip(image) if flipped else image, self.cfg.vision)


FLIPPED = "|flipped"   # a picture key's suffix for the mirrored picture


def targets_from_loss_mask(ids: list[int], loss_mask: list[bool]) -> torch.Tensor:
    """labels[t] = ids[t + 1] where the loss is taken on token t + 1, else IGNORE_INDEX (the model predicts the
    NEXT token at each position)."""
    labels = torch.full((len(ids),), IGNORE_INDEX, dtype=torch.long)
    for t in range(len(ids) - 1):
        if loss_mask[t + 1]:
            labels[t] = ids[t + 1]
    return labels


def collate(batch: list[dict], pad_token_id: int) -> dict:
    """Right-pad to the longest sample; all images of the batch stacked in reading order."""
    width = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[i, :n], labels[i, :n] = b["input_ids"], b["labels"]
    images = [b["images"] for b in batch if b["images"] is not None]
    return {"input_ids": input_ids, "labels": labels, "images": torch.cat(images) if images else None,
            "ids": [b["id"] for b in batch], **picture_keys(batch)}


def picture_keys(samples: list[dict]) -> dict:
    """{"picture_keys": every sample's keys in reading order} when the samples carry them, else {}."""
    if not samples or "picture_keys" not in samples[0]:
        return {}
    return {"picture_keys": [key for s in samples for key in s["picture_keys"]]}


def collate_packed(batch: list[dict], pad_token_id: int, max_len: int) -> dict:
    """Pack the batch's samples into as few rows of at most max_len tokens as first-fit allows (training with
    pack=true). `segment_ids` numbers the samples of each row 1, 2, ... (0 = padding) so the model keeps each
    sample's attention to itself and restarts its positions; images follow the placeholders' reading order."""
    rows: list[list[dict]] = []
    for sample in batch:
        n = len(sample["input_ids"])
        row = next((r for r in rows if sum(len(s["input_ids"]) for s in r) + n <= max_len), None)
        if row is None:
            rows.append([sample])
        else:
            row.append(sample)
    width = max(sum(len(s["input_ids"]) for s in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.zeros((len(rows), width), dtype=torch.long)
    images = []
    for i, row in enumerate(rows):
        start = 0
        for segment, sample in enumerate(row, start=1):
            end = start + len(sample["input_ids"])
            input_ids[i, start:end], labels[i, start:end] = sample["input_ids"], sample["labels"]
            segment_ids[i, start:end] = segment
            if sample["images"] is not None:
                images.append(sample["images"])
            start = end
    return {"input_ids": input_ids, "labels": labels, "segment_ids": segment_ids,
            "images": torch.cat(images) if images else None, "ids": [s["id"] for row in rows for s in row],
            **picture_keys([s for row in rows for s in row])}


GROUP_WINDOW = 64   # group_by_length sorts this many batches' samples at a time


class EpochSampler(Sampler):
    """Yields (index, epoch) in a fresh seeded permutation each epoch, sharded across DDP ranks, forever.

    start_batch skips that many batches of the first epoch (exact resume). Each rank gets the same number of
    samples (the permutation is padded by wrapping), so all ranks take the same number of steps."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start_epoch: int = 0, start_batch: int = 0, lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.start_epoch, self.start_batch = start_epoch, start_batch
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} samples")
        self.lengths = lengths

    def batches_per_epoch(self) -> int:
        per_rank = -(-self.n // self.world_size)
        return max(per_rank // self.batch_size, 1)

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch)).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        order = (order * (self.world_size + 1))[: per_rank * self.world_size]
        mine = order[self.rank::self.world_size]
        # drop the incomplete last batch so every step has the same batch size
        mine = mine[: self.batches_per_epoch() * self.batch_size]
        return self._grouped_by_length(mine, epoch) if self.lengths is not None and self.shuffle else mine

    def _grouped_by_length(self, order: list[int], epoch: int) -> list[int]:
        """Batches of samples of similar length, in random order: a batch is padded to its longest sample, so
        in a random batch ~20% of the positions a step computes are padding. Each window of GROUP_WINDOW batches
        of the shuffled order is sorted by length and cut into batches; the batches are then shuffled, so which
        samples meet and in what order stays random."""
        size, window = self.batch_size, self.batch_size * GROUP_WINDOW
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        random.Random(f"group/{self.seed}/{epoch}/{self.rank}").shuffle(batches)
        return [i for batch in batches for i in batch]

    def __iter__(self):
        epoch = self.start_epoch
        skip = self.start_batch * self.batch_size
        while True:
            for index in self.epoch_indices(epoch)[skip:]:
                yield index, epoch
            skip = 0
            epoch += 1
