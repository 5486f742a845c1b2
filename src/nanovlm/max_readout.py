"""An auxiliary loss that teaches a from-scratch vision encoder form: the answers' words, read from the
channel-wise MAX of the picture's encoder tokens through the decoder's (tied) word embeddings.

Why a max (README, "Does the vision encoder see form?", fourth round): the same encoder trained on shape labels
learns form in a few hundred steps when its tokens are read by a channel-wise max, and barely at all when they
are read by a mean or by attention, which is how a decoder reads them (a softmax-weighted average). A max hands
each channel's gradient to the one place where its pattern is strongest, so channels become detectors of parts of
shapes wherever they are; an average spreads it over every token, mostly background. The language-model loss
still trains everything; this loss gives the encoder the sharp signal that the decoder's attention does not.

The words come from the text alone (every answer token but the end of turn), so no labels are needed. In a
picture of several things the answers are a bag of their attributes, a weaker signal: on one-thing pictures this
loss makes shape naming four times faster to learn, on 1-3 things it barely helps (README). It adds no
parameters (the decoder's word embeddings are the read-out), so checkpoints, resume and inference are unchanged;
it needs vision.width == decoder.n_embd. Turn it on with `--set max_readout_weight=1` (TrainConfig).

`max_readout_pool=tokens` reads each word from its best token instead (the max over tokens of each token's
logits): one token must then hold a word's whole direction, which keeps a thing's form and colour in the same
token. With cosine attention in the decoder (`decoder.qk_norm`) it made the decoder find a thing by its colour
on 1-3-thing pictures (README, "Sixth round"); the channel max does not.

`max_readout_from=projector` reads the projector's output (the image tokens the decoder reads) instead of the
encoder's: with a frozen, cached encoder (cache_vision) only the projector learns from it, so that each image
token points where the words of the thing under it point, which is where a question's words can find it (a
direct signal for finding a thing by its shape; docs/form.md, fourteenth round). It needs no equal widths.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .config import ConfigError


def check_max_readout(cfg) -> None:
    """One clear error before training when the model cannot take the loss."""
    if cfg.vision.width != cfg.decoder.n_embd:
        raise ConfigError(f"max_readout_weight reads the encoder's tokens through the word embeddings, so it needs "
                          f"vision.width ({cfg.vision.width}) == decoder.n_embd ({cfg.decoder.n_embd})")


@contextlib.contextmanager
def keep_vision_tokens(model, source: str = "encoder"):
    """Keeps the vision encoder's (source="encoder") or the projector's ("projector") output of the forward run
    inside the block (`seen["tokens"]`), so the read-out reuses the language-model forward's tokens instead of
    running the encoder a second time."""
    seen = {}
    module = model.projector if source == "projector" else model.vision
    handle = module.register_forward_hook(lambda module, args, output: seen.__setitem__("tokens", output))
    try:
        yield seen
    finally:
        handle.remove()


READOUT_WORDS = ("answers", "conversation")
READOUT_POOLS = ("channels", "tokens")
READOUT_SOURCES = ("encoder", "projector")


def readout_targets(input_ids: torch.Tensor | None, labels: torch.Tensor, eos_token_id: int,
                    words: str = "answers") -> tuple[torch.Tensor, torch.Tensor]:
    """(sample index, token id) of every word the read-out must predict, as two 1-D tensors.

    answers: each answer token (not the end of turn). conversation: each distinct token of the sample's text
    that is an answer token somewhere in the batch, so the words a question names ("What color is the STAR?")
    count too. Why (README, "Fifth round"): the read-out learns form only when a picture's shape and colour
    are targets of the same step, and a question about one attribute names the other, so this gives both
    without changing the data (`nanovlm data shapes --per-thing both` asks both instead)."""
    is_answer = (labels != -100) & (labels != eos_token_id)
    if words == "answers":
        return is_answer.nonzero()[:, 0], labels[is_answer]
    if input_ids is None:
        raise ValueError('max_readout_words="conversation" reads the questions: it needs the input ids')
    named = torch.isin(input_ids, labels[is_answer].unique()) & (input_ids != eos_token_id)
    rows, _ = named.nonzero(as_tuple=True)
    pairs = torch.unique(torch.stack([rows, input_ids[named]]), dim=1)   # each word once per sample
    return pairs[0], pairs[1]


def max_readout_loss(model, images: torch.Tensor | None, labels: torch.Tensor, tokens: torch.Tensor | None = None,
                     input_ids: torch.Tensor | None = None, words: str = "answers",
                     pool: str = "channels", source: str = "encoder") -> torch.Tensor:
    """Cross-entropy of each target word of a sample (readout_targets) against its picture's logits: those of
    the channel-wise max of its patch tokens (pool="channels"), or each word's best patch token
    (pool="tokens": the max over tokens of each token's logits, so one token must hold a word's whole direction,
    not one channel per token). images: (B, 3, H, W), one per sample; labels: (B, T) next-token targets, -100 where
    no loss is taken; input_ids: (B, T), needed for words="conversation"; tokens: model.vision(images) (or, with
    source="projector", the projector's output) when already computed (keep_vision_tokens), else it is run here."""
    if (tokens if tokens is not None else images).shape[0] != labels.shape[0]:
        raise ValueError("max_readout_weight needs exactly one picture per sample")
    if tokens is None:
        tokens = model.vision(images)                                     # (B, [1 +] P, width)
        if source == "projector":
            tokens = model.projector(tokens)
    if model.cfg.vision.use_cls and source == "encoder":
        tokens = tokens[:, 1:]                                            # the patches only
    embeddings = model.decoder.tok_emb.weight
    if pool == "channels":
        logits = tokens.amax(1) @ embeddings.T                           # (B, vocab)
    else:
        logits = (tokens @ embeddings.T).amax(1)                         # (B, P, vocab) -> (B, vocab)
    rows, targets = readout_targets(input_ids, labels, model.cfg.eos_token_id, words)
    if not len(targets):
        return logits.sum() * 0.0                                         # no answer in this batch: no signal
    return F.cross_entropy(logits[rows].float(), targets)
