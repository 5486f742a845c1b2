"""VisionLanguageModel: images -> vision encoder -> projector -> image tokens fused into the text -> decoder.

Image tokens always enter through <|image|> placeholder ids in input_ids: the embedding of each placeholder is
overwritten by one projected image token. The paper's "prefix" fusion is the same thing with the placeholder(s)
at the start of the text, so training, the KV cache and generation have one code path for both families."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import sampling
from ..config import ConfigError, VLMConfig
from ..devices import resolve_device
from .decoder import Decoder
from .mismatch import describe_mismatch
from .layers import KVCache, pack_linear_weights
from .projector import Projector
from .vision import VisionEncoder

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


class CheckpointError(RuntimeError):
    """A saved model folder is missing, corrupted, or does not match its config."""


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.projector = Projector(cfg)
        self.decoder = Decoder(cfg.decoder)
        self.tokenizer = None   # set by from_pretrained() when the folder has a tokenizer.json
        # What the model card (README.md) says: base_model, datasets, eval_results. Read back by from_pretrained.
        self.card: dict = {}
        self.apply(self._init_weights)
        # GPT-2 / nanoGPT: scale the residual output projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.proj.weight", "mlp.down.weight")):
                n_layer = cfg.decoder.n_layer if name.startswith("decoder") else max(cfg.vision.n_layer, 1)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, VisionEncoder):
            if module.position is not None:    # a sincos table is fixed
                nn.init.normal_(module.position, std=0.02)
            if module.cls is not None:
                nn.init.normal_(module.cls, std=0.02)

    # ---------------------------------------------------------------- forward

    def encode_images(self, images: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, image_tokens_per_image, n_embd)."""
        return self.projector(self.vision(images, packed=packed), packed=packed)

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None, packed: dict | None = None,
              vision_features: torch.Tensor | None = None, stem_features: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with every <|image|> placeholder replaced by an image token, in order of appearance.
        images: (N, 3, H, W), all images of the batch in reading order (sample 0's first, ...).
        vision_features: instead of images, the vision encoder's outputs for them, (N, patches, width) (a frozen
        encoder's outputs kept from an earlier step: training with cache_vision=true).
        stem_features: instead of images, the output of the stem's fixed front for them (the scattering stem's
        coefficients, kept from an earlier step); the rest of the encoder runs and trains."""
        x = self.decoder.tok_emb(input_ids)                                  # (B, T, C)
        is_image = input_ids == self.cfg.image_token_id
        n_placeholders = int(is_image.sum())
        given = next((t for t in (vision_features, stem_features, images) if t is not None), None)
        n_images = 0 if given is None else given.shape[0]
        expected = n_images * self.cfg.image_tokens_per_image
        if n_placeholders != expected:
            raise ValueError(
                f"the text holds {n_placeholders} {self.cfg.image_token} placeholder tokens but {n_images} image(s) "
                f"x {self.cfg.image_tokens_per_image} tokens per image = {expected} were given")
        if n_images:
            if vision_features is not None:
                image_tokens = self.projector(vision_features, packed=packed)
            elif stem_features is not None:
                image_tokens = self.projector(self.vision(None, packed=packed, fixed=stem_features), packed=packed)
            else:
                image_tokens = self.encode_images(images, packed)            # (N, tokens_per_image, C)
            x = x.clone()
            x[is_image] = image_tokens.reshape(-1, x.shape[-1]).to(x.dtype)
        return x

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                return_logits: bool = True, segment_ids: torch.Tensor | None = None,
                vision_features: torch.Tensor | None = None, stem_features: torch.Tensor | None = None):
        """input_ids, labels: (B, T); labels are the targets for each position's NEXT token already aligned with
        input_ids (label[t] is the token at t+1), -100 where no loss is taken. Returns (logits, loss or None).

        attention_mask (B, T) is needed only for left-padded batches; right padding needs no mask because the
        causal mask already keeps real tokens from seeing the padding after them.
        segment_ids (B, T) marks packed rows (training with pack=true): several samples per row, numbered 1, 2, ...
        (0 = padding); each sample then attends only to itself and its positions restart at 0.

        return_logits=False (training) returns (None, loss) and applies lm_head only to the positions that have a
        label: the (B, T, vocab) logits are the largest activation of the model, and in VQA most positions
        (image tokens, question, chat template) take no loss.
        vision_features or stem_features replace images with what was kept of them (see embed)."""
        B, T = input_ids.shape
        x = self.embed(input_ids, images, vision_features=vision_features, stem_features=stem_features)
        if segment_ids is not None:
            position_ids, mask = packed_positions_and_mask(segment_ids)
        elif attention_mask is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            mask = None
        else:
            position_ids = positions_from_mask(attention_mask)
            mask = prefill_mask(attention_mask)
        hidden = self.decoder(x, position_ids, mask=mask, return_hidden=True, held=self.held_positions(input_ids))
        logits = self.decoder.lm_head(hidden) if return_logits or labels is None else None
        loss = None
        if labels is not None:
            has_target = labels != -100                                          # (B, T)
            target_logits = logits[has_target] if logits is not None else self.decoder.lm_head(hidden[has_target])
            loss = F.cross_entropy(target_logits.float(), labels[has_target])   # fp32 softmax over the vocabulary
        return logits, loss

    def held_positions(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The positions the decoder must not rewrite: the image tokens when decoder.hold_image_tokens, else None."""
        return input_ids == self.cfg.image_token_id if self.cfg.decoder.hold_image_tokens else None

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, max_new_tokens: int = 50, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 seed: int | None = None, return_logits: bool = False, packed_weights: dict | None = None):
        """Autoregressive generation with a preallocated KV cache.

        input_ids: (B, T), LEFT-padded when prompts differ in length, with attention_mask (B, T) marking real tokens.
        Each sequence stops at its own EOS; afterwards it is filled with the pad id. Returns the new tokens
        (B, <= max_new_tokens), plus the logits of every step (B, steps, V) when return_logits.
        packed_weights: from model.pack_inference_weights(), for faster bf16 inference on CPU (same numbers)."""
        tokens, step_logits = [], []
        for step in self.generate_steps(input_ids, images, attention_mask, max_new_tokens, temperature, top_k,
                                        top_p, eos_token_id, seed, return_logits=return_logits,
                                        packed_weights=packed_weights):
            tokens.append(step.tokens)
            if return_logits:
                step_logits.append(step.logits)
        out = torch.stack(tokens, dim=1)
        return (out, torch.stack(step_logits, dim=1)) if return_logits else out

    @torch.no_grad()
    def generate_steps(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, max_new_tokens: int = 50,
                       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                       eos_token_id: int | None = None, seed: int | None = None, return_logits: bool = False,
                       packed_weights: dict | None = None, constrain=None):
        """generate() one step at a time (for streaming and for servers that stop a batch early): yields a
        GenerationStep per new token, until every sequence has hit EOS or max_new_tokens are out. Closing the
        generator early is fine.

        constrain: a function (B, V) logits -> logits called before each token is sampled (structured output masks
        the tokens a JSON schema forbids; see nanovlm.structured). It is called after the consumer has taken the
        previous step, so it can depend on the tokens yielded so far. Log-probabilities stay the model's own.

        Everything this call needs (the KV caches, the sampler's random generator) lives in this call: nothing is
        set on the model's modules and no process-wide switch is flipped, so several calls, in several threads,
        can run on one model at the same time."""
        B, T = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate() needs LEFT-padded prompts: the last column of attention_mask must be all 1")
        eos = self.cfg.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id >= 0 else max(eos, 0)
        total_len = T + max_new_tokens
        if self.decoder.pos_emb is not None and total_len > self.cfg.decoder.max_seq_len:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds decoder.max_seq_len "
                             f"{self.cfg.decoder.max_seq_len}")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)

        # Without padding, the prompt needs only the plain causal mask and each new token may see every cached key:
        # passing no mask tensors keeps SDPA on its fastest path.
        padded = not bool(attention_mask.all())
        caches = self.new_kv_caches(B, total_len, device)
        if padded:
            key_mask = torch.ones(B, total_len, dtype=torch.bool, device=device)
            key_mask[:, :T] = attention_mask.bool()
        positions = positions_from_mask(attention_mask)                              # (B, T)
        logits = self.decoder(self.embed(input_ids, images, packed_weights), positions, caches=caches,
                              mask=prefill_mask(attention_mask) if padded else None, last_only=True,
                              packed=packed_weights, held=self.held_positions(input_ids))[:, -1]
        next_position = positions[:, -1:] + 1                                        # (B, 1)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            allowed_logits = logits if constrain is None else constrain(logits)
            token = sampling.sample(allowed_logits, temperature, top_k, top_p, generator)
            token = torch.where(finished, pad, token)
            # log-probability of the chosen token under the model's own (untempered) distribution: a confidence
            logprob = torch.log_softmax(logits.float(), dim=-1).gather(-1, token[:, None])[:, 0]
            yield GenerationStep(token, logprob, finished.clone(), logits.float() if return_logits else None)
            finished |= token == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                return
            cur = T + step                                                           # cache slot of this token
            x = self.decoder.tok_emb(token[:, None])                                 # (B, 1, C)
            mask = key_mask[:, None, None, : cur + 1] if padded else None            # (B, 1, 1, cur + 1)
            logits = self.decoder(x, next_position, mask=mask, caches=caches, cache_start=cur,
                                  packed=packed_weights)[:, -1]
            next_position = next_position + 1

    def pack_inference_weights(self) -> dict:
        """Every Linear weight of the model prepacked for oneDNN (bf16 on CPU; {} elsewhere), to pass to
        generate() as packed_weights: decoding 1.5-2.5x faster per matrix product, the prompt and the images 10-20%
        faster, same numbers. A second copy of the weights that the caller owns (a server makes it once); rebuild
        it after changing the weights."""
        return pack_linear_weights(self)

    def new_kv_caches(self, batch_size: int, max_len: int, device) -> list[KVCache]:
        """One empty KVCache per decoder block, for one generation call."""
        d = self.cfg.decoder
        dtype = self.decoder.tok_emb.weight.dtype
        return [KVCache(batch_size, d.n_kv_head, max_len, d.head_dim, dtype, device) for _ in self.decoder.blocks]

    # ---------------------------------------------------------------- parameters, save / load

    def num_parameters(self) -> dict[str, int]:
        """Unique parameters per module (a tied lm_head is counted once, in the embedding)."""
        count = lambda m: sum(p.numel() for p in m.parameters())   # parameters() yields a shared tensor once
        parts = {"vision": count(self.vision), "projector": count(self.projector), "decoder": count(self.decoder)}
        parts["total"] = sum(parts.values())
        return parts

    def save_pretrained(self, folder: str | os.PathLike, tokenizer=None):
        """Write config.json, model.safetensors and (if given or attached) tokenizer.json. Files are written to a
        temporary name first and renamed, so a crash never leaves a half-written model behind."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self._state_to_save().items()}
        _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        _atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(self.cfg.to_json()))
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is not None:
            _atomic_write(folder / TOKENIZER_FILE, lambda tmp: tokenizer.save(tmp))
            template = tokenizer.prompt_template(self.cfg.fusion, self.cfg.image_tokens_per_image)
            _atomic_write(folder / "tokenizer_config.json",
                          lambda tmp: tokenizer.save_config(tmp, template, self.cfg.decoder.max_seq_len))
        from ..hub import model_card
        card = model_card(self)
        _atomic_write(folder / "README.md", lambda tmp: tmp.write_text(card))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "VisionLanguageModel":
        """Rebuild the exact model saved by save_pretrained(). Never unpickles: config is JSON, weights safetensors.
        `folder` may also be a Hub repo id (owner/name, downloaded with huggingface_hub) or a folder in Hugging
        Face nanoVLM's own format (converted on the fly)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..hub import read_model_card, resolve_model_dir

        folder = resolve_model_dir(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} not found: is {folder} a folder written by save_pretrained()?")
        from ..convert.nanovlm import is_nanovlm_folder, load_nanovlm
        if is_nanovlm_folder(folder):
            return load_nanovlm(cls, folder, device=resolve_device(device), dtype=dtype)
        cfg = read_config(folder / CONFIG_FILE)
        device = resolve_device(device)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE), device=str(device))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{folder / WEIGHTS_FILE} is corrupted or not a safetensors file ({e}); "
                                  f"re-save or re-download the model") from None
        with torch.device("meta"):
            model = cls(cfg)
        model.load_weights(tensors, source=str(folder / WEIGHTS_FILE), assign=True, config=str(folder / CONFIG_FILE))
        if dtype is not None:
            model.to(dtype)
        if (folder / TOKENIZER_FILE).is_file():
            from ..tokenizer import Tokenizer
            model.tokenizer = Tokenizer.from_file(folder / TOKENIZER_FILE, cfg)
            if len(model.tokenizer) > cfg.decoder.vocab_size:   # its top ids would index past the embedding table
                raise CheckpointError(f"{folder / TOKENIZER_FILE} has {len(model.tokenizer)} tokens but the model's "
                                      f"embedding has {cfg.decoder.vocab_size} rows (decoder.vocab_size); use the "
                                      f"tokenizer.json saved with this model")
        model.card = read_model_card(folder)
        return model.eval()

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str = "weights", assign: bool = False,
                     config: str = "the model config"):
        """Load a flat {name: tensor} dict; any missing, unexpected, mis-shaped or non-float tensor makes one
        CheckpointError line that says which and the likely cause. assign=True adopts the given tensors as the
        parameters (for a model built on the meta device); the default copies into the existing parameters, so an
        optimizer holding them keeps working."""
        problem = describe_mismatch(self._state_to_save(), tensors, source, config)
        if problem:
            raise CheckpointError(problem)
        if assign and len({t.dtype for t in tensors.values()}) > 1:
            tensors = {k: t.float() for k, t in tensors.items()}   # one dtype for the whole model
        self.load_state_dict(tensors, strict=False, assign=assign)
        if assign and self.cfg.decoder.tie_embeddings:   # assign replaced the shared tensor: tie it again
            self.decoder.lm_head.weight = self.decoder.tok_emb.weight

    def _state_to_save(self) -> dict[str, torch.Tensor]:
        # A batch norm's step counter is an integer used only without a momentum: not a weight, not saved.
        state = {k: v for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}
        if self.cfg.decoder.tie_embeddings:
            state.pop("decoder.lm_head.weight")
        return state


@dataclass
class GenerationStep:
    """One step of generate_steps() for the whole batch: tokens (B,), their log-probabilities (B,) under the
    model's untempered distribution, which rows had already finished before this step (B,) (their token is the
    pad id), and the step's logits (B, V) when asked for."""
    tokens: torch.Tensor
    logprobs: torch.Tensor
    finished_before: torch.Tensor
    logits: torch.Tensor | None = None


def packed_positions_and_mask(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows (B, T) of segment ids, e.g. 1 1 1 2 2 0 0: positions restart at 0 in every segment, and a token
    sees only the earlier tokens of its own segment (block-diagonal causal mask (B, 1, T, T)). Padding (0) sees
    padding, so no row of the mask is empty (an empty row would make NaNs)."""
    B, T = segment_ids.shape
    index = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    segment_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]                     # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    return index - segment_start, (same_segment & causal)[:, None]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting real tokens only, so a left-padded prompt gets the same positions as the
    unpadded one. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask: causal, and no query sees padding. A padding query sees itself so that its
    softmax row is never empty (an empty row gives NaN, which would leak into the cache)."""
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    mask = causal & attention_mask.bool()[:, None, None, :]
    return mask | torch.eye(T, dtype=torch.bool, device=attention_mask.device)


def read_config(path: Path) -> VLMConfig:
    """config.json -> VLMConfig; a file that is not UTF-8 JSON or not a valid config is one CheckpointError."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}); it is damaged or not a config.json") \
            from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a config.json") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    try:
        return VLMConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid nanovlm config: {e}") from None


def _atomic_write(path: Path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
