"""Model configuration: four dataclasses and a registry of presets.

A VLM is vision encoder -> projector -> decoder. Every preset is just a VLMConfig; nothing in the model code
knows which preset it runs. Derived fields are filled in __post_init__ (gpt-fast style) so a config written to
config.json and read back is the same object.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# ImageNet-style statistics used by the paper presets; SigLIP normalises to [-1, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class ConfigError(ValueError):
    """A configuration a user wrote (preset name, --set key, config.json) is not valid."""


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768                  # embedding size of every patch token
    n_layer: int = 12
    n_head: int = 12
    mlp_hidden: int = 3072
    patch_stem: str = "linear"        # "linear": one conv, kernel = stride = patch (SigLIP); "conv2": the paper's stem;
                                      # "convnet": 3 x 3 stride-2 convs (a small CNN)
    stem_channels: int = 0            # conv2 / convnet: channels of the (last) conv (0 -> width // 2)
    use_cls: bool = False             # prepend a learned [CLS] token (the paper); SigLIP has none
    activation: str = "gelu_tanh"     # "gelu_tanh" (SigLIP) or "gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.0
    image_mean: tuple = SIGLIP_MEAN
    image_std: tuple = SIGLIP_STD

    def __post_init__(self):
        _check_choice("vision.patch_stem", self.patch_stem, ("linear", "conv2", "convnet"))
        _check_choice("vision.activation", self.activation, ("gelu", "gelu_tanh"))
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.n_head:
            raise ConfigError(f"vision.width {self.width} is not divisible by n_head {self.n_head}")
        if self.patch_stem == "conv2" and self.patch_size % 4:
            raise ConfigError("the conv2 stem downsamples in two stride-(patch/4, 4) steps: patch_size must be a multiple of 4")
        if self.patch_stem == "convnet" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError("the convnet stem halves the picture per conv: patch_size must be a power of two >= 2")
        if self.stem_channels == 0:
            self.stem_channels = self.width // 2
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side ** 2


@dataclass
class ProjectorConfig:
    kind: str = "pixel_shuffle"       # "mlp" (paper) or "pixel_shuffle" (nanoVLM)
    source: str = "patches"           # which encoder outputs are projected: "cls" (one token) or "patches"
    hidden_dim: int = 0               # mlp only: hidden width (0 -> 4 x the vision width, as in the paper)
    shuffle_factor: int = 2           # pixel_shuffle only: merge factor x factor neighbouring patches into one token
    # LayerNorm on the image tokens. Without it, a decoder trained from scratch lets them grow ~100x larger than
    # the text embeddings; then its layers can barely change them, and the vision path learns very slowly.
    output_norm: bool = False

    def __post_init__(self):
        _check_choice("projector.kind", self.kind, ("mlp", "pixel_shuffle"))
        _check_choice("projector.source", self.source, ("cls", "patches"))
        if self.kind == "pixel_shuffle" and self.source != "patches":
            raise ConfigError("projector.kind=pixel_shuffle needs projector.source=patches")


@dataclass
class DecoderConfig:
    """One decoder, two flavours. `flavour` fills every switch left as None:
    gpt   = learned positions, LayerNorm, GELU MLP, biases, multi-head attention (nanoGPT)
    llama = RoPE, RMSNorm, SiLU-gated MLP, no biases, grouped-query attention (SmolLM2)"""
    flavour: str = "llama"
    vocab_size: int = 49152
    n_embd: int = 576
    n_layer: int = 30
    n_head: int = 9
    n_kv_head: int = 0                # 0 -> n_head (plain multi-head attention)
    head_dim: int = 0                 # 0 -> n_embd // n_head
    mlp_hidden: int = 1536
    max_seq_len: int = 2048
    dropout: float = 0.0
    position_embedding: str | None = None   # "learned" | "rope"
    norm: str | None = None                 # "layernorm" | "rmsnorm"
    mlp: str | None = None                  # "gelu" | "swiglu"
    bias: bool | None = None
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        _check_choice("decoder.flavour", self.flavour, ("gpt", "llama"))
        gpt = self.flavour == "gpt"
        defaults = dict(position_embedding="learned" if gpt else "rope", norm="layernorm" if gpt else "rmsnorm",
                        mlp="gelu" if gpt else "swiglu", bias=gpt)
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _check_choice("decoder.position_embedding", self.position_embedding, ("learned", "rope"))
        _check_choice("decoder.norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("decoder.mlp", self.mlp, ("gelu", "swiglu"))
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"decoder.n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even decoder.head_dim, got {self.head_dim}")


@dataclass
class VLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Where the image tokens go in the prompt. Both use the same <|image|> placeholder mechanism in the model:
    # "prefix" puts them before the text (the paper), "placeholder" lets the chat template place them (nanoVLM).
    fusion: str = "prefix"
    image_token: str = "<|image|>"
    max_images: int = 1               # images per sample the data pipeline accepts
    name: str = "custom"
    # Special token ids, written by Tokenizer.configure() so the model and its tokenizer stay in step (-1 = unset).
    image_token_id: int = -1
    bos_token_id: int = -1
    eos_token_id: int = -1
    pad_token_id: int = -1

    def __post_init__(self):
        for attr, cls in (("vision", VisionConfig), ("projector", ProjectorConfig), ("decoder", DecoderConfig)):
            value = getattr(self, attr)
            if isinstance(value, dict):
                setattr(self, attr, _from_dict(cls, value, attr))
        _check_choice("fusion", self.fusion, ("prefix", "placeholder"))
        if self.projector.source == "cls" and not self.vision.use_cls:
            raise ConfigError("projector.source=cls needs vision.use_cls=true")
        if self.projector.kind == "pixel_shuffle" and self.vision.patches_per_side % self.projector.shuffle_factor:
            raise ConfigError(f"{self.vision.patches_per_side} patches per side is not divisible by "
                              f"projector.shuffle_factor {self.projector.shuffle_factor}")

    @property
    def image_tokens_per_image(self) -> int:
        if self.projector.source == "cls":
            return 1
        if self.projector.kind == "pixel_shuffle":
            return self.vision.num_patches // self.projector.shuffle_factor ** 2
        return self.vision.num_patches

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VLMConfig":
        return _from_dict(cls, data, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_overrides(self, overrides: dict[str, Any]) -> "VLMConfig":
        """Return a copy with dotted keys replaced, e.g. {"decoder.n_layer": 2, "vision.image_size": 64}."""
        data = self.to_dict()
        _forget_derived(data, overrides)
        for key, value in overrides.items():
            node, *path = key.split(".")
            target = data
            parts = [node, *path]
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    raise ConfigError(f"unknown config key {key!r}: {part!r} is not a section")
                target = target[part]
            if parts[-1] not in target:
                known = ", ".join(sorted(target))
                raise ConfigError(f"unknown config key {key!r}; known keys here: {known}")
            target[parts[-1]] = value
        return VLMConfig.from_dict(data)


# Fields filled in by __post_init__ when 0, and what they are derived from. An override of an input re-derives
# them (unless they were set to something else on purpose): decoder.n_embd=48 must not keep head_dim=64.
# (section, field): (the fields it is derived from, how)
DERIVED_FIELDS = {
    ("decoder", "head_dim"): (("n_embd", "n_head"), lambda d: d["n_embd"] // d["n_head"]),
    ("decoder", "n_kv_head"): (("n_head",), lambda d: d["n_head"]),
    ("vision", "stem_channels"): (("width",), lambda d: d["width"] // 2),
}


def _forget_derived(data: dict, overrides: dict):
    for (section, name), (inputs, derive) in DERIVED_FIELDS.items():
        inputs_changed = any(f"{section}.{i}" in overrides for i in inputs)
        was_derived = data[section][name] == derive(data[section])
        if inputs_changed and was_derived and f"{section}.{name}" not in overrides:
            data[section][name] = 0


def _check_choice(name: str, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _from_dict(cls, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return cls(**data)


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------

def _paper(name, vit_blocks, vit_width, n_layer, n_head, head_dim, vocab_size=4096) -> VLMConfig:
    """The NanoVLMs paper (Table 1): conv2 ViT with CLS -> MLP projector -> ONE prefix token -> GPT decoder."""
    return VLMConfig(
        name=name,
        vision=VisionConfig(image_size=224, patch_size=16, width=vit_width, n_layer=vit_blocks, n_head=8,
                            mlp_hidden=4 * vit_width, patch_stem="conv2", stem_channels=256, use_cls=True, activation="gelu",
                            norm_eps=1e-5, dropout=0.1, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=ProjectorConfig(kind="mlp", source="cls"),
        decoder=DecoderConfig(flavour="gpt", vocab_size=vocab_size, n_embd=n_head * head_dim, n_layer=n_layer,
                              n_head=n_head, mlp_hidden=4 * n_head * head_dim, max_seq_len=256, dropout=0.1),
        fusion="prefix",
    )


def _nanovlm_222m() -> VLMConfig:
    return VLMConfig(
        name="nanovlm-222m",
        vision=VisionConfig(image_size=224, patch_size=16, width=768, n_layer=12, n_head=12, mlp_hidden=3072,
                            patch_stem="linear", use_cls=False, activation="gelu_tanh", norm_eps=1e-6),
        projector=ProjectorConfig(kind="pixel_shuffle", source="patches", shuffle_factor=2),
        decoder=DecoderConfig(flavour="llama", vocab_size=49152, n_embd=576, n_layer=30, n_head=9, n_kv_head=3,
                              mlp_hidden=1536, max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5,
                              tie_embeddings=True),
        fusion="placeholder",
    )


def _demo() -> VLMConfig:
    """Small and fast: trains on 64 px scenes on 2 CPU cores in minutes. The paper's decoder, but the image enters
    as 16 tokens (8 x 8 patches, pixel-shuffled 2 x 2) instead of the one CLS vector: naming several objects and
    where they are needs more than one vector, and 16 tokens train twice as fast as 64. The patches come from a
    small conv net rather than a linear map (it tells shapes apart: 88.6% -> 96.5% of objects named right in the
    main job), and the image tokens are layer-normed (see ProjectorConfig.output_norm)."""
    return VLMConfig(
        name="demo",
        vision=VisionConfig(image_size=64, patch_size=8, width=128, n_layer=2, n_head=4, mlp_hidden=512,
                            patch_stem="convnet", stem_channels=128, use_cls=True, activation="gelu", norm_eps=1e-5,
                            dropout=0.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=ProjectorConfig(kind="pixel_shuffle", source="patches", shuffle_factor=2, output_norm=True),
        decoder=DecoderConfig(flavour="gpt", vocab_size=1024, n_embd=128, n_layer=3, n_head=4,
                              mlp_hidden=512, max_seq_len=256, dropout=0.0),
        fusion="prefix",
    )


def _tiny() -> VLMConfig:
    """The smallest model that exercises every code path; used by the tests."""
    return VLMConfig(
        name="tiny",
        vision=VisionConfig(image_size=32, patch_size=8, width=32, n_layer=1, n_head=2, mlp_hidden=64,
                            patch_stem="conv2", use_cls=True, activation="gelu", norm_eps=1e-5,
                            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=ProjectorConfig(kind="mlp", source="patches", hidden_dim=64),
        decoder=DecoderConfig(flavour="gpt", vocab_size=512, n_embd=32, n_layer=2, n_head=2, mlp_hidden=64,
                              max_seq_len=128),
        fusion="prefix",
    )


PRESETS = {
    "mini": lambda: _paper("mini", vit_blocks=1, vit_width=400, n_layer=4, n_head=8, head_dim=12),
    "base": lambda: _paper("base", vit_blocks=3, vit_width=512, n_layer=8, n_head=8, head_dim=16),
    "large": lambda: _paper("large", vit_blocks=5, vit_width=512, n_layer=10, n_head=16, head_dim=12),
    "nanovlm-222m": _nanovlm_222m,
    "demo": _demo,
    "tiny": _tiny,
}

# The paper's Table 2: share of parameters in ViT / projector / decoder, for `nanovlm info`.
PAPER_TABLE2 = {
    "mini": {"params": 5e6, "vision": 0.69, "projector": 0.14, "decoder": 0.17},
    "base": {"params": 16e6, "vision": 0.78, "projector": 0.08, "decoder": 0.16},
    "large": {"params": 25e6, "vision": 0.73, "projector": 0.06, "decoder": 0.21},
}


def from_name(name: str) -> VLMConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
