"""The training loop, in plain PyTorch: one CPU, one GPU, or many processes under torchrun (DDP).

    from nanovlm.train import TrainConfig, train
    summary = train(TrainConfig(preset="demo", data="data/scenes", out="runs/demo"))

AdamW with linear warm-up + cosine decay, gradient accumulation and clipping, bf16 autocast (fp16 + GradScaler
on CUDA), per-module learning rates and freezing, periodic validation with early stopping, atomic `best` and
`last` checkpoints, and exact resume (model, optimizer, schedule, step, RNG and data position)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from . import checkpoint
from .config import (ConfigError, VLMConfig, _check_choice, all_model_keys, did_you_mean, from_name,
                     typed_kwargs)
from .data import format as fmt
from .data.loader import Augmentation, EpochSampler, VLMDataset, collate, collate_packed
from .cpu_share import CpuShare
from .devices import PRECISIONS, resolve_device, resolve_precision
from .images import DEFAULT_MAX_PIXELS
from .model.vlm import VisionLanguageModel
from .contrastive import image_text_contrastive
from .max_readout import (READOUT_POOLS, READOUT_SOURCES, READOUT_WORDS, check_max_readout, keep_vision_tokens,
                          max_readout_loss)
from .probe import ShapeProbe, grad_norms
from .vision_cache import VisionCache, check_cache_fits
from .progress import progress
from .tokenizer import Tokenizer

MODULES = ("vision", "projector", "decoder")


@dataclass
class TrainConfig:
    preset: str = "demo"
    data: str = "data/scenes"
    out: str = "runs/demo"
    model: dict = field(default_factory=dict)     # model config overrides, e.g. {"decoder.n_layer": 2}
    tokenizer: str | None = None                  # a tokenizer.json; None -> train a BPE on the training texts
    split_digits: bool = False                    # that BPE writes every digit as its own token (documents' numbers)
    # Pretrained backbones (nanoVLM's recipe): a language model (HF Llama folder, .gguf file or Hub id) whose
    # tokenizer and chat format the run uses, and optionally a SigLIP vision encoder (folder or Hub id).
    # Pretrained parts then train at PRETRAINED_LR unless their lr_* is set; fresh parts (projector) at lr.
    language: str | None = None
    vision: str | None = None
    # "random": the language model's architecture and tokenizer with fresh weights, trained at `lr` like the other
    # fresh parts: the control run that shows what the pretrained weights are worth
    language_init: str = "pretrained"
    steps: int = 1500                             # optimizer steps
    batch_size: int = 32                          # samples per micro-batch (per process)
    grad_accum: int = 1                           # micro-batches per optimizer step
    lr: float = 1e-3
    lr_vision: float | None = None                # per-module learning rates (None -> lr)
    lr_projector: float | None = None
    lr_decoder: float | None = None
    freeze: list = field(default_factory=list)    # modules kept fixed: any of vision, projector, decoder (a frozen
                                                  # vision encoder runs in inference mode: see train_mode)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1                     # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0                        # max gradient norm; 0 = off
    # auto (bf16 autocast where bf16 is fast: GPUs, CPUs whose bf16 products beat fp32's; else fp32) | fp32 | bf16 | fp16
    # (CUDA, autocast + GradScaler). train_config.json records the precision a run used.
    precision: str = "auto"
    eval_every: int = 100                         # steps between validations (and `last` checkpoints)
    eval_batches: int = 10                        # validation batches per evaluation
    patience: int = 0                             # evaluations without improvement before stopping; 0 = off
    # what `best` is kept by: the validation "loss", or an evaluation task's held-out score ("vqa": accuracy on
    # select_questions validation questions, answered greedily at every evaluation)
    select_by: str = "loss"
    select_questions: int = 200
    augment: bool = True
    max_image_pixels: int = DEFAULT_MAX_PIXELS    # larger images are refused from their header, before decoding
    # Shape and colour linear probes of the frozen vision features every N steps (nanovlm.probe; metrics.jsonl
    # probe_shape / probe_color); 0 = off
    probe_every: int = 0
    # weight of the image-text contrastive loss added to the language-model loss (nanovlm.contrastive); 0 = off
    contrastive_weight: float = 0.0
    # the first N steps train on the contrastive loss ALONE (a CLIP-style warm-up of the vision encoder and the
    # projector against the decoder's word embeddings), before the language-model loss joins; 0 = off
    contrastive_warmup_steps: int = 0
    # weight of the max read-out loss (nanovlm.max_readout: the answers' words from the channel-wise max of the
    # encoder's tokens, the signal that teaches a from-scratch encoder form); 0 = off
    max_readout_weight: float = 0.0
    # its targets: "answers" (the answers' words) or "conversation" (also the words a question names that are
    # answers elsewhere in the batch: a picture's shape and colour in the same step without asking both)
    max_readout_words: str = "answers"
    # how it pools the patch tokens: "channels" (each channel's max) or "tokens" (each word's best token)
    max_readout_pool: str = "channels"
    # what it reads: "encoder" (the vision encoder's tokens: it teaches the encoder) or "projector" (the image
    # tokens the decoder reads: with a frozen, cached encoder it teaches the projector; works with cache_vision)
    max_readout_from: str = "encoder"
    vision_init: str | None = None                # vision encoder start: converted EfficientNet, model folder, vision.*
    # With the pretrained efficientnet_lite0 stem: only its last N blocks (and its fresh 1 x 1 map) train; the
    # earlier, high-resolution blocks stay as ImageNet left them, so a step costs little more than with a frozen
    # encoder (no backward pass through them). None = every block trains.
    stem_trainable_blocks: int | None = None
    pack: bool = False                            # several short samples per row (block-diagonal attention)
    # Batches of samples of similar length (in random order): less padding, cheaper steps when lengths vary
    group_by_length: bool = False
    # Keep what the vision encoder computes the same way at every visit of a picture (nanovlm.vision_cache): its
    # outputs with freeze=vision, or the scattering stem's wavelet coefficients; augmentation is then limited to
    # mirror flips (a mirrored picture is a second entry).
    cache_vision: bool = False
    seed: int = 0
    num_workers: int = 0                          # DataLoader worker processes
    device: str = "auto"                          # auto | cpu | cuda
    threads: int = 0                              # torch CPU threads; 0 = a fair share of the cores (cpu_share.py)
    report_to: list = field(default_factory=list) # "wandb" and/or "tensorboard" (used only when installed)
    resume: bool = False                          # continue from out/last (its model, optimizer and tokenizer)
    overwrite: bool = False                       # replace an existing run in `out`
    progress: bool = True

    def __post_init__(self):
        check = _range_check
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("language_init", self.language_init, ("pretrained", "random"))
        check(self.language_init == "pretrained" or self.language is not None,
              "language_init=random starts a pretrained language model's architecture afresh: it needs --language")
        unknown = set(self.freeze) - set(MODULES)
        check(not unknown, f"freeze: unknown module(s) {sorted(unknown)}; choose from {', '.join(MODULES)}")
        check(self.stem_trainable_blocks is None or self.stem_trainable_blocks >= 0,
              f"stem_trainable_blocks must be >= 0, got {self.stem_trainable_blocks}")
        check(self.stem_trainable_blocks is None or "vision" not in self.freeze,
              "stem_trainable_blocks chooses what of the vision encoder trains, but freeze=vision fixes all of it: "
              "drop one of them")
        check(self.stem_trainable_blocks is None or self.vision is None,
              "stem_trainable_blocks applies to the pretrained efficientnet_lite0 stem, not to a SigLIP vision=...: "
              "use lr_vision or freeze=vision there")
        check(not (self.cache_vision and (self.contrastive_weight or self.contrastive_warmup_steps
                                          or (self.max_readout_weight and self.max_readout_from == "encoder"))),
              "the contrastive and the max read-out losses teach the vision encoder from its pictures: they "
              "cannot be combined with cache_vision=true (the read-out can, with max_readout_from=projector)")
        unknown = set(self.report_to) - {"wandb", "tensorboard"}
        check(not unknown, f"report_to: unknown tracker(s) {sorted(unknown)}; choose from wandb, tensorboard")
        if self.select_by != "loss":
            from .evaluate.runner import available_scorers
            tasks = ["loss", *[t for t in available_scorers() if not t.startswith("_")]]
            _check_choice("select_by", self.select_by, tasks)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "select_questions"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "patience", "seed", "num_workers", "threads", "probe_every",
                     "contrastive_warmup_steps"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "lr_vision", "lr_projector", "lr_decoder"):
            value = getattr(self, name)
            check(value is None or 0 < value <= 1, f"{name} must be in (0, 1], got {value}")
        check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(0 <= self.contrastive_weight <= 100, f"contrastive_weight must be in [0, 100], got {self.contrastive_weight}")
        check(0 <= self.max_readout_weight <= 100, f"max_readout_weight must be in [0, 100], got {self.max_readout_weight}")
        _check_choice("max_readout_words", self.max_readout_words, READOUT_WORDS)
        _check_choice("max_readout_pool", self.max_readout_pool, READOUT_POOLS)
        _check_choice("max_readout_from", self.max_readout_from, READOUT_SOURCES)
        check(not (self.max_readout_weight and self.language),
              "max_readout_weight teaches a from-scratch encoder through its own word embeddings: it cannot be "
              "combined with a pretrained --language model")
        check(not (self.max_readout_weight and self.pack),
              "max_readout_weight reads each row's picture for its answers: it cannot be combined with pack=true")
        check(not ((self.contrastive_weight or self.contrastive_warmup_steps) and self.pack),
              "the contrastive loss pairs each row's picture with its text: it cannot be combined with pack=true")
        check(self.contrastive_warmup_steps < self.steps,
              f"contrastive_warmup_steps ({self.contrastive_warmup_steps}) must be fewer than steps ({self.steps})")
        check(0 <= self.weight_decay <= 1, f"weight_decay must be in [0, 1], got {self.weight_decay}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        check(self.num_workers <= 64 and self.threads <= 1024, "num_workers must be <= 64 and threads <= 1024")
        _check_choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        check(not self.vision_init or Path(self.vision_init).exists(),
              f"vision_init {self.vision_init}: no such file or model folder")
        check(self.vision is None or self.language is not None,
              "a pretrained vision encoder (vision=...) needs a pretrained language model too (language=...)")
        check(self.language is None or self.tokenizer is None,
              "language=... brings its own tokenizer; drop tokenizer=...")

    @classmethod
    def from_options(cls, options: dict, where: str = "--set") -> "TrainConfig":
        """Training options (strings from the command line or JSON values) parsed by their field types; dotted
        or VLMConfig keys go to `model`. A preset with a recipe (PRESET_RECIPES) starts from it; the options win."""
        options = {**PRESET_RECIPES.get(str(options.get("preset", cls.preset)), {}), **options}
        train_kw, model_kw = split_overrides(options)
        kwargs = typed_kwargs(cls, train_kw, where)
        kwargs["model"] = {**kwargs.get("model", {}), **model_kw}
        return cls(**kwargs)


# Training options a preset is meant to be trained with, under the user's own (flags and --set win).
PRESET_RECIPES: dict[str, dict] = {
    # Documents: no augmentation (the loader's horizontal flip would mirror the text; the scans already vary in
    # rotation, blur, noise and lighting), one digit per token, a batch of 16 pages (384 image tokens each).
    "documents": {"steps": 2400, "batch_size": 16, "lr": 2e-3, "warmup_steps": 100, "augment": False,
                  "split_digits": True, "eval_every": 250},
    # The scattering stem is fixed wavelets: frozen (its batch norm takes the statistics of 512 pictures) and
    # computed once per picture; no augmentation (the measured runs had none). Not grouped by length: one pair of
    # runs learned less with it (docs/form.md, twelfth round). The max read-out on the held image tokens (each word
    # of the conversation from its best token, teaching the projector) made finding a thing by its shape start
    # early in every seed tried (fourteenth round). 3,500 steps: 13-15 minutes on 2 cores.
    "demo-scattering": {"steps": 3500, "lr": 2e-3, "freeze": ["vision"], "cache_vision": True,
                        "augment": False, "eval_every": 250, "max_readout_weight": 1.0,
                        "max_readout_from": "projector", "max_readout_pool": "tokens",
                        "max_readout_words": "conversation"},
}


def _range_check(condition: bool, message: str):
    if not condition:
        raise ConfigError(message)


TRAIN_OPTIONS_HINT = "see README.md, 'Training options', for the list"


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """--set pairs -> (TrainConfig fields, model config keys). Model keys are dotted (decoder.n_layer) or a
    top-level VLMConfig field (fusion)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(VLMConfig)}
    train_kw, model_kw = {}, {}
    for key, value in overrides.items():
        if key in train_fields:
            train_kw[key] = value
        elif "." in key or key in model_fields:
            model_kw[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}: not a training option nor a model key"
                              f"{did_you_mean(key, sorted(train_fields) + all_model_keys(), TRAIN_OPTIONS_HINT)}")
    return train_kw, model_kw


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to min_lr_ratio."""
    if step < tcfg.warmup_steps:
        return (step + 1) / tcfg.warmup_steps
    progress = min(1.0, (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps))
    return tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------- set-up


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(tcfg: TrainConfig) -> Runtime:
    """Single process, or one DDP process per torchrun worker (gloo on CPU, NCCL on CUDA)."""
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)    # "cuda" without CUDA is a clear ConfigError here
    use_cuda = device.type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        # plain "cuda": one GPU per torchrun worker; "cuda:N": the GPU asked for
        index = int(os.environ.get("LOCAL_RANK", "0")) if device.index is None else device.index
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(rank=rank, world_size=world_size, device=device)


RUN_FILES = ("best", "last", "metrics.jsonl", "loss_curve.png", "tokenizer.json", "train_config.json", "tensorboard")


def check_run_folder(tcfg: TrainConfig, out: Path):
    """Refuse to touch someone's run unless asked: --resume continues it, --overwrite replaces it."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if tcfg.resume:
        if not (out / "last" / "trainer_state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {out / 'last'} holds no checkpoint; start without --resume")
    elif existing and not tcfg.overwrite:
        raise FileExistsError(f"{out} already holds a run ({', '.join(existing)}); continue it with --resume, "
                              f"replace it with --overwrite, or choose another --out")


def clear_run_folder(out: Path):
    import shutil

    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build_tokenizer(tcfg: TrainConfig, model_cfg: VLMConfig, out: Path, rt: Runtime, records: list[dict]) -> Tokenizer:
    """The checkpoint's own tokenizer on resume (its ids are what the weights learned), a given tokenizer.json,
    or a BPE trained on the training texts by rank 0."""
    if tcfg.resume:
        return Tokenizer.from_file(out / "last" / "tokenizer.json")
    if tcfg.tokenizer:
        return Tokenizer.from_file(tcfg.tokenizer)
    own = out / "tokenizer.json"
    if rt.is_main:
        texts = (t[k] for r in records for t in r["texts"] for k in ("user", "assistant"))
        tokenizer = Tokenizer.train(texts, vocab_size=model_cfg.decoder.vocab_size, split_digits=tcfg.split_digits)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(own)
    barrier(rt)
    return Tokenizer.from_file(own)


PRETRAINED_LR = 5e-5   # nanoVLM's rate for its pretrained backbones; the fresh projector trains at lr (1e-3)


def build_from_backbones(tcfg: TrainConfig) -> tuple[VisionLanguageModel, TrainConfig]:
    """The preset's model with the pretrained language model (and vision encoder) of tcfg, and the recipe's
    learning rates for the parts that came pretrained (where tcfg does not set them)."""
    from .convert.backbones import build_vlm

    pretrained = {"decoder": tcfg.language_init == "pretrained", "vision": tcfg.vision is not None}
    model = build_vlm(tcfg.language, tcfg.vision, preset=tcfg.preset, overrides=tcfg.model,
                      language_weights=pretrained["decoder"])
    rates = {f"lr_{part}": PRETRAINED_LR for part, yes in pretrained.items()
             if yes and getattr(tcfg, f"lr_{part}") is None}
    return model, dataclasses.replace(tcfg, **rates)


def check_stem_trainable_blocks(cfg: VLMConfig, trainable: int) -> None:
    """One clear error before training when stem_trainable_blocks does not fit the model's vision stem."""
    from .model.efficientnet import blocks_for_stride
    if cfg.vision.patch_stem != "efficientnet_lite0":
        raise ConfigError("stem_trainable_blocks applies to the pretrained vision.patch_stem=efficientnet_lite0, "
                          f"not to vision.patch_stem={cfg.vision.patch_stem}")
    blocks = blocks_for_stride(cfg.vision.patch_size)
    if trainable > blocks:
        raise ConfigError(f"stem_trainable_blocks={trainable}, but the stem runs {blocks} blocks at "
                          f"vision.patch_size={cfg.vision.patch_size}")


def build_optimizer(model: VisionLanguageModel, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one group per (module, decay) pair; frozen modules get no group. Norm weights and biases
    (1-D tensors) are not decayed."""
    groups = []
    if tcfg.stem_trainable_blocks is not None:   # checked by check_stem_trainable_blocks
        for p in model.vision.patch_stem.early_parameters(tcfg.stem_trainable_blocks):
            p.requires_grad_(False)
    for module in MODULES:
        params = getattr(model, module).parameters()
        if module in tcfg.freeze:
            for p in params:
                p.requires_grad_(False)
            continue
        lr = getattr(tcfg, f"lr_{module}") or tcfg.lr
        params = [p for p in params if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lr, "base_lr": lr, "name": f"{module}{'' if decay else '.no_decay'}",
                               "weight_decay": tcfg.weight_decay if decay else 0.0})
    if not groups:
        raise ConfigError("every module is frozen: nothing to train")
    # The fused kernel updates all parameters in one pass (CUDA and CPU): ~4x faster than the per-tensor loop.
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), fused=True)


CALIBRATION_PICTURES = 512   # pictures that set a frozen encoder's unused batch norms (statistics to ~5%)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def untouched_batch_norms(module: nn.Module) -> list[nn.Module]:
    """The batch norms that have never seen data: running mean exactly 0 and variance exactly 1, as built."""
    return [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats
            and not m.running_mean.any() and bool((m.running_var == 1).all())]


@torch.no_grad()
def calibrate_batch_norms(vision: nn.Module, pictures: list[torch.Tensor], batch_size: int = 64) -> int:
    """A frozen vision encoder runs in inference mode (see train_mode), where a batch norm normalises with its
    running statistics. One that has never seen data (a from-scratch stem: resnet, scattering) would normalise
    with 0 and 1; this gives it the mean and variance over `pictures` instead (the batch norms that already hold
    statistics, e.g. loaded with vision_init, are left as they are). Returns how many were calibrated."""
    fresh = untouched_batch_norms(vision)
    if not fresh or not pictures:
        return 0
    was_training = vision.training
    vision.eval()
    momenta = [m.momentum for m in fresh]
    for m in fresh:
        m.train()
        m.momentum = None                    # a cumulative average over the calibration batches
    try:
        for i in range(0, len(pictures), batch_size):
            vision(torch.stack(pictures[i:i + batch_size]))
    finally:
        for m, momentum in zip(fresh, momenta):
            m.momentum = momentum
        vision.train(was_training)
    return len(fresh)


def train_mode(model: VisionLanguageModel, tcfg: TrainConfig):
    """model.train(), but a frozen vision encoder stays in inference mode (no dropout, batch norms with fixed
    statistics): frozen means it computes the same thing at every visit, which is also what cache_vision keeps."""
    model.train()
    if "vision" in tcfg.freeze:
        model.vision.eval()


def make_loader(dataset: VLMDataset, tcfg: TrainConfig, rt: Runtime, pad_id: int, shuffle: bool,
                skip_batches: int = 0) -> tuple[DataLoader, EpochSampler]:
    """skip_batches: micro-batches already trained on (exact resume starts right after them)."""
    sampler = EpochSampler(len(dataset), tcfg.batch_size, seed=tcfg.seed, rank=rt.rank, world_size=rt.world_size,
                           shuffle=shuffle, lengths=dataset.lengths() if tcfg.group_by_length and shuffle else None)
    sampler.start_epoch, sampler.start_batch = divmod(skip_batches, sampler.batches_per_epoch())
    loader = DataLoader(dataset, batch_size=tcfg.batch_size, sampler=sampler, num_workers=tcfg.num_workers,
                        collate_fn=partial(collate_packed, pad_token_id=pad_id, max_len=dataset.max_len) if tcfg.pack
                        else partial(collate, pad_token_id=pad_id), persistent_workers=tcfg.num_workers > 0)
    return loader, sampler


def autocast(tcfg: TrainConfig, device: torch.device):
    """The autocast context of a precision already resolved (resolve_precision: never "auto" here)."""
    if tcfg.precision == "fp32":
        return contextlib.nullcontext()
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; use auto, fp32 or bf16")
    dtype = torch.bfloat16 if tcfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def barrier(rt: Runtime):
    if rt.world_size > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------- the loop


def train(tcfg: TrainConfig) -> dict:
    """Train; return a summary (steps, losses, time, checkpoint paths)."""
    rt = setup_runtime(tcfg)
    tcfg = dataclasses.replace(tcfg, precision=resolve_precision(tcfg.precision, rt.device))
    out = Path(tcfg.out)
    torch.manual_seed(tcfg.seed + rt.rank)
    if not Path(tcfg.data).is_dir():
        raise FileNotFoundError(f"data folder {tcfg.data} not found; make one with `nanovlm data scenes --out {tcfg.data}`")
    model_cfg = from_name(tcfg.preset, tcfg.model)
    if tcfg.preset in PRESET_RECIPES and rt.is_main:
        recipe = ", ".join(f"{k}={v}" for k, v in PRESET_RECIPES[tcfg.preset].items())
        print(f"preset {tcfg.preset} trains with its recipe unless told otherwise: {recipe}")
    if tcfg.max_readout_weight and tcfg.max_readout_from == "encoder":
        check_max_readout(model_cfg)
    if tcfg.stem_trainable_blocks is not None:
        check_stem_trainable_blocks(model_cfg, tcfg.stem_trainable_blocks)
    if tcfg.cache_vision and tcfg.vision is None:       # a --vision encoder is checked when it is built
        check_cache_vision(model_cfg.vision, tcfg)
    check_run_folder(tcfg, out)
    records = fmt.read_records(tcfg.data, split="train", check_images=False)   # a broken dataset fails before any write
    if tcfg.overwrite and not tcfg.resume and rt.is_main:
        clear_run_folder(out)
    barrier(rt)
    if tcfg.language:
        model, tcfg = build_from_backbones(tcfg)
        tokenizer, model_cfg, model = model.tokenizer, model.cfg, model.to(rt.device)
    else:
        tokenizer = build_tokenizer(tcfg, model_cfg, out, rt, records)
        model_cfg = tokenizer.configure(model_cfg)
        model = VisionLanguageModel(model_cfg).to(rt.device)
    model.card["datasets"] = [Path(tcfg.data).resolve().name]
    if tcfg.vision_init and not tcfg.resume:
        from .convert.vision_init import load_vision_init
        load_vision_init(model, tcfg.vision_init)
    optimizer = build_optimizer(model, tcfg)

    augmentation = None
    if tcfg.augment:
        augmentation = Augmentation.flips_only() if tcfg.cache_vision else Augmentation()
    train_set = VLMDataset(tcfg.data, tokenizer, model_cfg, split="train", augmentation=augmentation, seed=tcfg.seed,
                           max_pixels=tcfg.max_image_pixels, picture_keys=tcfg.cache_vision)
    if "vision" in tcfg.freeze and not tcfg.resume and untouched_batch_norms(model.vision):
        pictures = [train_set.picture(path).to(rt.device) for path in train_set.picture_paths()[:CALIBRATION_PICTURES]]
        calibrated = calibrate_batch_norms(model.vision, pictures)
        if calibrated and rt.is_main:
            print(f"freeze=vision: {calibrated} batch norm(s) of the encoder took their statistics from "
                  f"{len(pictures)} training pictures")
    vision_cache = make_vision_cache(model, train_set, tcfg, rt) if tcfg.cache_vision else None
    val_set = VLMDataset(tcfg.data, tokenizer, model_cfg, split="val", max_pixels=tcfg.max_image_pixels)

    state = {"step": 0, "best_val_loss": None, "best_score": None, "evals_without_improvement": 0, "elapsed_s": 0.0}
    if tcfg.resume:
        state.update(checkpoint.load_checkpoint(out / "last", model, optimizer))
    consumed = state["step"] * tcfg.grad_accum                     # micro-batches already trained on
    train_loader, _ = make_loader(train_set, tcfg, rt, tokenizer.pad_token_id, shuffle=True, skip_batches=consumed)
    val_loader, _ = make_loader(val_set, dataclasses.replace(tcfg, num_workers=0), rt, tokenizer.pad_token_id,
                                shuffle=False)

    ddp_model = model
    if rt.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=tcfg.contrastive_warmup_steps > 0)   # the warm-up leaves the decoder unused
    scaler = torch.amp.GradScaler("cuda", enabled=tcfg.precision == "fp16")
    logger = MetricsLogger(out, tcfg, rt, resumed_step=state["step"])
    if rt.is_main:
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(tcfg), indent=1))

    batches = iter(train_loader)
    if "rng" in state:
        checkpoint.restore_rng(state.pop("rng"))
    progress = logger.progress_bar(state["step"])
    start_time, start_step = time.time() - state["elapsed_s"], state["step"]
    stop = False
    probe = None
    # Without --threads, share the cores fairly with other nanovlm processes (see cpu_share.py for the 8x why).
    cpu_share = CpuShare() if not tcfg.threads and rt.device.type == "cpu" else None
    try:
        while state["step"] < tcfg.steps and not stop:
            step = state["step"]
            if cpu_share:
                cpu_share.update(step)
            set_learning_rates(optimizer, lr_at(step, tcfg))
            train_mode(model, tcfg)
            t0 = time.time()
            loss, n_tokens = train_step(ddp_model, optimizer, scaler, batches, tcfg, rt,
                                        contrastive_only=step < tcfg.contrastive_warmup_steps,
                                        vision_cache=vision_cache)
            state["step"] = step + 1
            state["elapsed_s"] = time.time() - start_time
            record = {"step": step + 1, "loss": loss, **learning_rates(optimizer), **grad_norms(model),
                      "tokens_per_s": n_tokens * rt.world_size / (time.time() - t0),
                      "elapsed_s": round(state["elapsed_s"], 3)}   # training time so far (compare runs by time)
            if (step + 1) % tcfg.eval_every == 0 or step + 1 == tcfg.steps:
                record["val_loss"] = evaluate_loss(model, val_loader, tcfg, rt)
                if tcfg.select_by != "loss":
                    record[f"val_{tcfg.select_by}"] = evaluate_task(model, tokenizer, val_set.records, tcfg, rt)
                stop = update_best(state, record, tcfg)
                if rt.is_main:
                    if state["evals_without_improvement"] == 0:
                        checkpoint.save_checkpoint(out / "best", model, optimizer, state, tokenizer)
                    checkpoint.save_checkpoint(out / "last", model, optimizer, state, tokenizer)
                barrier(rt)
            if tcfg.probe_every and (step + 1) % tcfg.probe_every == 0 and rt.is_main:
                probe = probe or ShapeProbe(model_cfg.vision)
                record.update(probe(model))
            logger.log(record, progress)
    finally:
        if cpu_share:
            cpu_share.close()
    progress.close()
    logger.finish()
    summary = {"steps": state["step"], "final_loss": logger.last_loss, "best_val_loss": state["best_val_loss"],
               "select_by": tcfg.select_by, "best_score": state.get("best_score"),
               "stopped_early": stop, "train_time_s": round(time.time() - start_time, 1),
               "steps_this_run": state["step"] - start_step,
               "best": str(out / "best"), "last": str(out / "last"), "metrics": str(out / "metrics.jsonl")}
    if rt.world_size > 1:
        dist.destroy_process_group()
    return summary


def train_step(model, optimizer, scaler, batches, tcfg: TrainConfig, rt: Runtime,
               contrastive_only: bool = False, vision_cache: VisionCache | None = None) -> tuple[float, int]:
    """One optimizer step over grad_accum micro-batches. Returns the mean loss (over all ranks) and the number
    of tokens this rank processed. contrastive_only: the warm-up's step, the contrastive loss alone.
    vision_cache: the batches name their pictures (picture_keys) and the frozen encoder's outputs come from it."""
    optimizer.zero_grad(set_to_none=True)
    total_loss, n_tokens = 0.0, 0
    for micro in range(tcfg.grad_accum):
        batch = next(batches)
        ids, labels = batch["input_ids"].to(rt.device), batch["labels"].to(rt.device)
        images = batch["images"].to(rt.device) if batch["images"] is not None else None
        # DDP: only the last micro-batch needs to all-reduce gradients
        sync = micro == tcfg.grad_accum - 1 or rt.world_size == 1
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast(tcfg, rt.device):
            features = vision_cache.features(batch["picture_keys"]) if batch.get("picture_keys") else None
            contrastive = lambda: image_text_contrastive(getattr(model, "module", model), ids, images, labels)
            if contrastive_only:
                if images is None:
                    raise ValueError("contrastive_warmup_steps needs a picture in every training sample")
                loss = contrastive()
            else:
                inner = getattr(model, "module", model)
                readout = bool(tcfg.max_readout_weight) and (images is not None or features is not None)
                source = tcfg.max_readout_from
                with keep_vision_tokens(inner, source) if readout else contextlib.nullcontext({}) as seen:
                    kept = {vision_cache.kind: features} if features is not None else {}
                    _, loss = model(ids, images, labels=labels, return_logits=False, segment_ids=segments(batch, rt),
                                    **kept)
                if tcfg.contrastive_weight and images is not None:
                    loss = loss + tcfg.contrastive_weight * contrastive()
                if readout:
                    readout_loss = max_readout_loss(inner, images, labels, seen["tokens"], ids, tcfg.max_readout_words,
                                                    tcfg.max_readout_pool, source)
                    loss = loss + tcfg.max_readout_weight * readout_loss
        scaler.scale(loss / tcfg.grad_accum).backward()
        total_loss += loss.item() / tcfg.grad_accum
        n_tokens += ids.numel()
    if tcfg.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], tcfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return all_reduce_mean(total_loss, rt), n_tokens


def make_vision_cache(model: VisionLanguageModel, train_set: VLMDataset, tcfg: TrainConfig, rt: Runtime) -> VisionCache:
    """The cache of what the vision encoder computes the same way at every visit: a frozen encoder's outputs, or
    the scattering stem's coefficients. Refused up front when neither applies or it could outgrow the memory."""
    cfg = model.cfg.vision
    kind = check_cache_vision(cfg, tcfg)
    if kind == "vision_features":
        values = (cfg.num_patches + int(cfg.use_cls)) * cfg.width
    else:
        values = model.vision.patch_stem.fixed(torch.zeros(1, 3, cfg.height, cfg.image_size, device=rt.device)).numel()
    n_pictures = len(train_set.picture_paths())
    size = check_cache_fits(n_pictures * (2 if tcfg.augment else 1), values)
    if rt.is_main:
        what = "encoder outputs" if kind == "vision_features" else "scattering coefficients"
        print(f"cache_vision: up to {size / 2**30:.2f} GiB of {what} for {n_pictures} pictures"
              + (" and their mirror images; augmentation limited to mirror flips" if tcfg.augment else ""))
    return VisionCache(model.vision, train_set.picture, rt.device, kind)


def check_cache_vision(vision_cfg, tcfg: TrainConfig) -> str:
    """Which part of the vision encoder cache_vision can keep ("vision_features" or "stem_features"); a
    ConfigError when no part of it stays unchanged while training."""
    if "vision" in tcfg.freeze:      # frozen: the whole encoder's outputs (a step then runs no encoder at all)
        return "vision_features"
    if vision_cfg.has_fixed_front:   # the scattering stem's wavelet coefficients; what follows them trains
        return "stem_features"
    raise ConfigError("cache_vision keeps what of the vision encoder stays unchanged while training: add "
                      "freeze=vision, or use the scattering stem (vision.patch_stem=scattering), whose wavelets "
                      "never train")


def segments(batch: dict, rt: Runtime):
    """The packed rows' segment ids on the device (pack=true), else None."""
    return batch["segment_ids"].to(rt.device) if "segment_ids" in batch else None


@torch.no_grad()
def evaluate_loss(model: VisionLanguageModel, loader: DataLoader, tcfg: TrainConfig, rt: Runtime) -> float:
    model.eval()
    losses = []
    batches = iter(loader)
    n = min(tcfg.eval_batches, loader.sampler.batches_per_epoch())
    for _ in range(n):
        batch = next(batches)
        images = batch["images"].to(rt.device) if batch["images"] is not None else None
        with autocast(tcfg, rt.device):
            _, loss = model(batch["input_ids"].to(rt.device), images, labels=batch["labels"].to(rt.device),
                            segment_ids=segments(batch, rt),
                            return_logits=False)
        losses.append(loss.item())
    return all_reduce_mean(sum(losses) / len(losses), rt)


@torch.no_grad()
def evaluate_task(model: VisionLanguageModel, tokenizer, records: list[dict], tcfg: TrainConfig, rt: Runtime) -> float:
    """The headline score of the task tcfg.select_by (VQA accuracy, ...) on the first select_questions validation
    questions, answered greedily in fp32 as `nanovlm eval` would."""
    from .evaluate import evaluate, get_scorer

    model.eval()
    model.tokenizer = tokenizer
    scorer = get_scorer(tcfg.select_by)
    result = evaluate(model, tcfg.data, scorer, split="val", records=records, limit=tcfg.select_questions,
                      batch_size=max(tcfg.batch_size, 32), progress=False)
    if not isinstance(result["summary"].get(scorer.headline), (int, float)):
        raise ConfigError(f"select_by={tcfg.select_by}: the task reports no {scorer.headline!r} to select by")
    return all_reduce_mean(float(result["summary"][scorer.headline]), rt)


def update_best(state: dict, record: dict, tcfg: TrainConfig) -> bool:
    """Track the best validation loss, and the best task score when select_by names a task; the evaluation is an
    improvement (`best` is saved) when the selected one got better. Returns True when patience has run out."""
    val_loss = record["val_loss"]
    if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
        state["best_val_loss"] = val_loss
        improved = tcfg.select_by == "loss"
    else:
        improved = False
    if tcfg.select_by != "loss":
        score = record[f"val_{tcfg.select_by}"]
        improved = state.get("best_score") is None or score > state["best_score"]
        if improved:
            state["best_score"] = score
    state["evals_without_improvement"] = 0 if improved else state["evals_without_improvement"] + 1
    return bool(tcfg.patience) and state["evals_without_improvement"] >= tcfg.patience


def set_learning_rates(optimizer, multiplier: float):
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier


def learning_rates(optimizer) -> dict[str, float]:
    """{"lr_vision": ..., "lr_projector": ..., "lr_decoder": ...}: each trained module's current learning rate
    (a module's decay and no-decay groups share it; frozen modules have none)."""
    return {f"lr_{group['name'].split('.')[0]}": group["lr"] for group in optimizer.param_groups}


def all_reduce_mean(value: float, rt: Runtime) -> float:
    """The same number on every rank, so every rank makes the same early-stopping decision."""
    if rt.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world_size


# --------------------------------------------------------------------------------------------- logging


class MetricsLogger:
    """metrics.jsonl (append-only; on resume, lines past the checkpoint are dropped), a tqdm bar, a loss-curve
    PNG, and Weights & Biases / TensorBoard when asked for and installed. Rank 0 only."""

    def __init__(self, out: Path, tcfg: TrainConfig, rt: Runtime, resumed_step: int):
        self.out, self.tcfg, self.active = out, tcfg, rt.is_main
        self.path = out / "metrics.jsonl"
        self.last_loss = None
        self.history: list[dict] = []
        self.backends = []
        if not self.active:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resumed_step and self.path.exists():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.history = [r for r in lines if r["step"] <= resumed_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.backends = open_backends(tcfg, out)

    def progress_bar(self, initial: int):
        return progress(total=self.tcfg.steps, initial=initial, desc="train", unit="step",
                        enabled=self.active and self.tcfg.progress)

    def log(self, record: dict, progress):
        self.last_loss = record["loss"]
        progress.update(1)
        if not self.active:
            return
        self.history.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        postfix = {"loss": f"{record['loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if "val_loss" in record:
            postfix["val"] = f"{record['val_loss']:.3f}"
            plot_loss_curve(self.history, self.out / "loss_curve.png")
        progress.set_postfix(postfix, refresh=False)
        for backend in self.backends:
            backend(record)

    def finish(self):
        if self.active and self.history:
            plot_loss_curve(self.history, self.out / "loss_curve.png")


def open_backends(tcfg: TrainConfig, out: Path) -> list:
    """Optional experiment trackers: each is a function record -> None. Missing packages are skipped with a note."""
    backends = []
    if "wandb" in tcfg.report_to:
        try:
            import wandb
            run = wandb.init(project="nanovlm", config=dataclasses.asdict(tcfg), dir=str(out))
            backends.append(lambda r: run.log(r, step=r["step"]))
        except ImportError:
            print("note: wandb is not installed; skipping Weights & Biases logging")
    if "tensorboard" in tcfg.report_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))
            backends.append(lambda r: [writer.add_scalar(k, v, r["step"]) for k, v in r.items() if k != "step"])
        except ImportError:
            print("note: tensorboard is not installed; skipping TensorBoard logging")
    return backends


def plot_loss_curve(history: list[dict], path: Path):
    """Training loss (light: raw, dark: moving average) and validation loss against steps (paper Figure 6)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    losses = [r["loss"] for r in history]
    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(steps, smooth, color="tab:blue", label="train")
    if val:
        ax.plot(*zip(*val), color="tab:orange", marker="o", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
