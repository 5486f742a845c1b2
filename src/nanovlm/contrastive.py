"""An image-text contrastive loss (CLIP's InfoNCE) as an auxiliary objective for from-scratch vision encoders.

The language-model loss reaches the vision encoder only through the decoder's attention: a weak, late signal
that colour statistics already satisfy. This loss gives the encoder a direct one: the mean of each picture's image
tokens (after the projector, i.e. in the decoder's embedding space) must be closer to the mean embedding of ITS
OWN text's tokens (a bag of words: "circle", "red", "two", ...) than to the other texts of the batch, and the other
way round. It adds no parameters (the decoder's token embeddings are the text side), so checkpoints, resume and
inference are unchanged. Turn it on with `--set contrastive_weight=0.5` (TrainConfig).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.1


def image_text_contrastive(model, input_ids: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None = None,
                           temperature: float = TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; one image per sample. Text = every non-image, non-padding token (the
    questions and answers, or the description)."""
    if images.shape[0] != input_ids.shape[0]:
        raise ValueError("the contrastive loss needs exactly one image per sample")
    image = model.encode_images(images).mean(1)                                  # (B, C)
    cfg = model.cfg
    is_text = (input_ids != cfg.image_token_id) & (input_ids != cfg.pad_token_id)
    if labels is not None:   # right padding uses the pad id, which may equal a real token id: trust the labels
        is_text &= torch.arange(input_ids.shape[1], device=input_ids.device) <= _last_target(labels)[:, None]
    weights = is_text.to(image.dtype)[..., None]                                 # (B, T, 1)
    text = (model.decoder.tok_emb(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1)   # (B, C)
    logits = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T / temperature   # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _last_target(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last position with a label (the end of each sample's text), (B,)."""
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != -100, positions, torch.zeros_like(positions)).amax(1) + 1
