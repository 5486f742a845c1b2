"""Text from images with a trained model: the library call behind `nanovlm generate` and the evaluations.

    model = VisionLanguageModel.from_pretrained("runs/demo/best")
    complete(model, [Image.open("cat.png")], answer_starts=["There is"])   # -> [" a small black cat ..."]
"""
from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from .config import ConfigError, VLMConfig
from .data.format import DESCRIBE_PROMPT
from .data.transforms import to_tensor
from .images import open_image  # noqa: F401  (re-exported: predict.open_image was its first home)
from .model.vlm import CheckpointError, VisionLanguageModel
from .sampling import GenerationConfig


@torch.no_grad()
def complete(model: VisionLanguageModel, images: list[Image.Image | list[Image.Image]],
             answer_starts: list[str] | None = None, questions: list[str] | None = None,
             generation: GenerationConfig | None = None, batch_size: int = 32, **options) -> list[str]:
    """For each image, continue the answer to its question from the given start (the paper's task: the first
    words of a description). Returns only the generated continuation of each. An entry of `images` may be a list:
    that sample's images in order (multi-image questions), or [] for a text-only one.

    generation: a GenerationConfig; keyword options (max_new_tokens=, temperature=, top_k=, top_p=, seed=, stop=)
    override its fields. A bad value, or a prompt that leaves no room in the model's context, is a ConfigError."""
    generation = dataclasses.replace(generation or GenerationConfig(), **options)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise CheckpointError("the model has no tokenizer: load it with VisionLanguageModel.from_pretrained(dir) "
                              "from a folder holding tokenizer.json")
    n = len(images)
    answer_starts = answer_starts or [""] * n
    questions = questions or [DESCRIBE_PROMPT] * n
    if not len(answer_starts) == len(questions) == n:
        raise ValueError(f"got {n} images, {len(questions)} questions and {len(answer_starts)} answer starts")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    outputs = []
    for start in range(0, n, batch_size):
        chunk = range(start, min(start + batch_size, n))
        per_sample = [images[i] if isinstance(images[i], (list, tuple)) else [images[i]] for i in chunk]
        prompts = [tokenizer.encode_conversation([{"user": questions[i], "assistant": answer_starts[i]}],
                                                 len(own) * model.cfg.image_tokens_per_image,
                                                 fusion=model.cfg.fusion, for_generation=True)[0]
                   for i, own in zip(chunk, per_sample)]
        check_context(model.cfg, max(map(len, prompts)), generation.max_new_tokens)
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        flat = [to_tensor(image, model.cfg.vision) for own in per_sample for image in own]
        pixels = torch.stack(flat).to(device, dtype) if flat else None
        new = model.generate(ids.to(device), pixels, attention_mask=mask.to(device),
                             max_new_tokens=generation.max_new_tokens, temperature=generation.temperature,
                             top_k=generation.top_k, top_p=generation.top_p, seed=generation.seed)
        outputs.extend(generation.cut_at_stop(tokenizer.decode(row)) for row in new.tolist())
    return outputs


def check_context(cfg: VLMConfig, prompt_len: int, max_new_tokens: int):
    """The prompt (image tokens + text) and the answer must fit the decoder's context: say the limits, before
    anything is computed (a learned-position decoder would fail deep inside torch, a RoPE one would allocate a
    cache for any length asked)."""
    limit = cfg.decoder.max_seq_len
    if prompt_len >= limit:
        raise ConfigError(f"the prompt is {prompt_len} tokens (image tokens + question + answer start), but the "
                          f"model's context (decoder.max_seq_len) is {limit} tokens; shorten the question or the "
                          f"answer start")
    if prompt_len + max_new_tokens > limit:
        raise ConfigError(f"max_new_tokens {max_new_tokens} + the prompt's {prompt_len} tokens exceed the model's "
                          f"context of {limit} tokens (decoder.max_seq_len); use max_new_tokens <= "
                          f"{limit - prompt_len}")


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask
