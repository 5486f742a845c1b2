"""Model configuration: four dataclasses and a registry of presets.

A VLM is vision encoder -> projector -> decoder. Every preset is just a VLMConfig; nothing in the model code
knows which preset it runs. Derived fields are filled in __post_init__ (gpt-fast style) so a config written to
config.json and read back is the same object.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# ImageNet-style statistics used by the paper presets; SigLIP normalises to [-1, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# EfficientNet-Lite models take (pixel - 127) / 128
EFFICIENTNET_MEAN = (0.498, 0.498, 0.498)
EFFICIENTNET_STD = (0.502, 0.502, 0.502)


class ConfigError(ValueError):
    """A configuration a user wrote (preset name, --set key, config.json) is not valid."""


# ---------------------------------------------------------------------------------------------------------------
# Typed values: every option (a --set pair, a CLI flag, a config.json entry) is parsed by its dataclass field's
# type here, and nowhere else.
# ---------------------------------------------------------------------------------------------------------------

_TRUE, _FALSE, _NONE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"none", "null"}


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse_value(kind, value, name: str):
    """`value` (a string from the command line, or a JSON value) as the type `kind`, or a ConfigError naming
    the option. Strings are parsed (\"4\" -> 4, \"vision,projector\" -> [\"vision\", \"projector\"]); JSON values
    must already have the right type (4.0 is no int, \"4\" is no number in config.json)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):          # X | None
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return parse_value(args[0], value, name)
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if origin is int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if origin is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if origin is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise ConfigError(f"{name} must be a list like [\"a\", \"b\"] or a,b; got {value!r}") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else str
        items = [parse_value(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{name} must be a mapping, got {value!r}")
    raise TypeError(f"no parser for the type {kind} of {name}")       # a bug in nanovlm, not a user error


def typed_kwargs(cls, data: dict, where: str) -> dict:
    """data's values parsed by cls's field types; unknown keys are one error with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    kinds = {f.name: field_types(cls)[f.name] for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in kinds:
            raise ConfigError(f"unknown key {key!r} in {where}{did_you_mean(key, kinds)}")
    return {key: parse_value(kinds[key], value, f"{where}.{key}" if where != "config" else key)
            for key, value in data.items()}


def did_you_mean(key: str, known, fallback: str | None = None) -> str:
    """'; did you mean X?' for the closest known names, else the fallback hint (default: the known names)."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return f"; {fallback}" if fallback else f"; known keys: {', '.join(sorted(known))}"


def _check(condition: bool, message: str):
    if not condition:
        raise ConfigError(message)


def _check_choice(name: str, value, choices):
    _check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass
class VisionConfig:
    image_size: int = 224             # the picture's width in pixels (and its height, unless image_height is set)
    image_height: int = 0             # 0: a square picture; else its height (a 384 x 256 page: image_size=384,
                                      # image_height=256), read as it is instead of squeezed to a square
    patch_size: int = 16
    width: int = 768                  # embedding size of every patch token
    n_layer: int = 12
    n_head: int = 12
    mlp_hidden: int = 3072
    patch_stem: str = "linear"        # "linear": one conv, kernel = stride = patch (SigLIP); "conv2": the paper's stem;
                                      # "convnet": 3 x 3 stride-2 convs (a small CNN); "resnet": the same
                                      # with batch norms and a residual conv per stage; "efficientnet_lite0": the
                                      # first blocks of an ImageNet CNN (load its weights with vision_init=...);
                                      # "scattering": fixed Morlet wavelets (edges and their layout), nothing learned
                                      # before its batch norm and 3 x 3 conv
    stem_channels: int = 0            # conv2 / convnet / resnet: channels of the (last) conv (0 -> width // 2)
    scattering_context: int = 0       # scattering: each token's coefficients describe a neighbourhood 2^N times its
                                      # patch (wavelets and average up to that scale, the token grid unchanged):
                                      # tokens that see a whole thing (docs/form.md, "Eleventh round")
    use_cls: bool = False             # prepend a learned [CLS] token (the paper); SigLIP has none
    position: str = "learned"         # patch positions: "learned" (a trained table, SigLIP/ViT) or "sincos" (MAE's
                                      # fixed 2-D sine-cosine table: where a patch is, from step 0, even when the
                                      # encoder is frozen or trains at a low rate, as a pretrained CNN stem does)
    activation: str = "gelu_tanh"     # "gelu_tanh" (SigLIP) or "gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.0
    image_mean: tuple[float, ...] = SIGLIP_MEAN
    image_std: tuple[float, ...] = SIGLIP_STD

    def __post_init__(self):
        _check_choice("vision.patch_stem", self.patch_stem, ("linear", "conv2", "convnet", "resnet", "efficientnet_lite0",
                                                                 "scattering"))
        _check_choice("vision.activation", self.activation, ("gelu", "gelu_tanh"))
        _check_choice("vision.position", self.position, ("learned", "sincos"))
        _check(self.position != "sincos" or self.width % 4 == 0,
               f"vision.position=sincos splits vision.width into 4 equal parts (row and column, sine and cosine): "
               f"width must be a multiple of 4, got {self.width}")
        _check(8 <= self.image_size <= 4096, f"vision.image_size must be in 8..4096 pixels, got {self.image_size}")
        _check(self.image_height == 0 or 8 <= self.image_height <= 4096,
               f"vision.image_height must be 0 (square) or in 8..4096 pixels, got {self.image_height}")
        _check(1 <= self.patch_size <= min(self.image_size, self.height),
               f"vision.patch_size must be in 1..{min(self.image_size, self.height)} (the picture's shorter side), "
               f"got {self.patch_size}")
        for name in ("width", "n_head", "mlp_hidden"):
            _check(getattr(self, name) >= 1, f"vision.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.n_layer >= 0, f"vision.n_layer must be >= 0, got {self.n_layer}")
        _check(self.stem_channels >= 0, f"vision.stem_channels must be >= 0 (0 = width // 2), got {self.stem_channels}")
        _check(self.norm_eps > 0, f"vision.norm_eps must be > 0, got {self.norm_eps}")
        _check(0 <= self.dropout < 1, f"vision.dropout must be in [0, 1), got {self.dropout}")
        _check(len(self.image_mean) == 3 and len(self.image_std) == 3 and min(self.image_std) > 0,
               "vision.image_mean and image_std need 3 values each (R, G, B), the std values > 0")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.height % self.patch_size:
            raise ConfigError(f"vision.image_height {self.height} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.n_head:
            raise ConfigError(f"vision.width {self.width} is not divisible by n_head {self.n_head}")
        if self.patch_stem == "conv2" and self.patch_size % 4:
            raise ConfigError("the conv2 stem downsamples in two stride-(patch/4, 4) steps: patch_size must be a multiple of 4")
        if self.patch_stem in ("convnet", "resnet", "scattering") and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"the {self.patch_stem} stem halves the picture per step: patch_size must be a power of two >= 2")
        _check(0 <= self.scattering_context <= 3,
               f"vision.scattering_context must be in 0..3 (octaves beyond the patch), got {self.scattering_context}")
        _check(self.scattering_context == 0 or self.patch_stem == "scattering",
               "vision.scattering_context applies to vision.patch_stem=scattering only")
        _check(self.patch_size << self.scattering_context <= min(self.image_size, self.height),
               f"vision.scattering_context={self.scattering_context}: the view, patch_size x "
               f"{2 ** self.scattering_context} = {self.patch_size << self.scattering_context} px, must fit in the "
               f"picture's shorter side ({min(self.image_size, self.height)} px)")
        if self.patch_stem == "efficientnet_lite0" and self.patch_size not in (2, 4, 8, 16, 32):
            raise ConfigError("the efficientnet_lite0 stem downsamples by 2, 4, 8, 16 or 32: patch_size must be one "
                              f"of them, got {self.patch_size}")
        if self.stem_channels == 0:
            self.stem_channels = self.width // 2
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    @property
    def has_fixed_front(self) -> bool:
        """Whether the stem begins with a part that never trains (the scattering stem's wavelets), which
        cache_vision can keep per picture while the rest of the encoder trains."""
        return self.patch_stem == "scattering"

    @property
    def height(self) -> int:
        """The picture's height in pixels (image_size for a square one)."""
        return self.image_height or self.image_size

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of patches."""
        return self.height // self.patch_size, self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    def describe_size(self) -> str:
        """'64 px' for a square picture, '384 x 256 px' (width x height) otherwise."""
        return f"{self.image_size} x {self.image_height} px" if self.image_height else f"{self.image_size} px"


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
        _check(self.hidden_dim >= 0, f"projector.hidden_dim must be >= 0 (0 = 4 x vision width), got {self.hidden_dim}")
        _check(self.shuffle_factor >= 1, f"projector.shuffle_factor must be >= 1, got {self.shuffle_factor}")
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
    # > 0: cosine attention (q and k L2-normalised per head) times a learned per-head temperature that starts at
    # this value; 0: plain scaled dot-product. A from-scratch decoder learns to look AT one image token only with it
    # (README, "Sixth round": binding on the shapes data); pretrained LMs were trained without it.
    qk_norm: float = 0.0
    # true: the image tokens are read, never rewritten. Every layer's attention reads their keys and values, but their
    # own hidden states stay what the projector made (no attention query, no MLP at those positions), as the
    # encoder's output in an encoder-decoder. A step then costs what the text costs plus two products per image
    # token and layer: with 64 image tokens before ~50 words, about half (README, "Benchmarks").
    hold_image_tokens: bool = False
    # with hold_image_tokens: the first N layers still rewrite the image tokens, the later ones read what they made.
    rewritten_image_layers: int = 0

    def __post_init__(self):
        _check_choice("decoder.flavour", self.flavour, ("gpt", "llama"))
        _check(1 <= self.vocab_size <= 2**21, f"decoder.vocab_size must be in 1..{2**21}, got {self.vocab_size}")
        for name in ("n_embd", "n_layer", "n_head", "mlp_hidden"):
            _check(getattr(self, name) >= 1, f"decoder.{name} must be >= 1, got {getattr(self, name)}")
        _check(1 <= self.max_seq_len <= 2**20, f"decoder.max_seq_len must be in 1..{2**20}, got {self.max_seq_len}")
        _check(self.n_kv_head >= 0 and self.head_dim >= 0, "decoder.n_kv_head and head_dim must be >= 0 (0 = derived)")
        _check(0 <= self.dropout < 1, f"decoder.dropout must be in [0, 1), got {self.dropout}")
        _check(self.rope_theta > 0 and self.norm_eps > 0, "decoder.rope_theta and norm_eps must be > 0")
        _check(0 <= self.qk_norm <= 1000, f"decoder.qk_norm must be in [0, 1000] (0 = off), got {self.qk_norm}")
        if self.rewritten_image_layers:
            _check(self.hold_image_tokens, "decoder.rewritten_image_layers applies with decoder.hold_image_tokens=true")
            _check(0 <= self.rewritten_image_layers < self.n_layer,
                   f"decoder.rewritten_image_layers must be in 0..{self.n_layer - 1} (decoder.n_layer - 1: the later "
                   f"layers hold the image tokens), got {self.rewritten_image_layers}")
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
        _check(self.head_dim >= 1, f"decoder.n_embd {self.n_embd} is smaller than n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"decoder.n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even decoder.head_dim, got {self.head_dim}")


SECTIONS = {"vision": VisionConfig, "projector": ProjectorConfig, "decoder": DecoderConfig}


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
        for attr, cls in SECTIONS.items():
            value = getattr(self, attr)
            if isinstance(value, dict):
                setattr(self, attr, cls(**typed_kwargs(cls, value, attr)))
        _check_choice("fusion", self.fusion, ("prefix", "placeholder"))
        _check(bool(self.image_token), "image_token must not be empty")
        _check(1 <= self.max_images <= 64, f"max_images must be in 1..64, got {self.max_images}")
        if self.projector.source == "cls" and not self.vision.use_cls:
            raise ConfigError("projector.source=cls needs vision.use_cls=true")
        rows, cols = self.vision.grid
        if self.projector.kind == "pixel_shuffle" and (rows % self.projector.shuffle_factor
                                                       or cols % self.projector.shuffle_factor):
            raise ConfigError(f"a grid of {rows} x {cols} patches is not divisible by "
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
    def from_dict(cls, data: dict, where: str = "config") -> "VLMConfig":
        return build_config(data, where=where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_overrides(self, overrides: dict[str, Any]) -> "VLMConfig":
        """A new config from the same keyword arguments this one was built from (a preset's, before anything was
        derived) with dotted keys replaced, e.g. {"decoder.n_layer": 2, "vision.image_size": 64}. Derived fields
        (head_dim, norm, ...) are derived afresh unless the overrides set them."""
        return build_config(getattr(self, "source", None) or self.to_dict(), overrides)


def build_config(raw: dict, overrides: dict[str, Any] | None = None, where: str = "config") -> VLMConfig:
    """The one way a VLMConfig is made from keyword arguments: overrides (dotted keys; strings are parsed by the
    field's type) applied to a copy of `raw`, then every field type- and range-checked, derived fields filled once."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}")
    data = copy.deepcopy(raw)
    known = all_model_keys()
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown model key {key!r}{did_you_mean(key, known, MODEL_KEYS_HINT)}")
        section, _, name = key.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        if not isinstance(target, dict):
            raise ConfigError(f"{where}: {section} must be a JSON object")
        target[name] = value
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    kwargs = typed_kwargs(VLMConfig, top, where)
    for section, cls in SECTIONS.items():
        value = data.get(section, {})
        if isinstance(value, cls):
            value = dataclasses.asdict(value)
        kwargs[section] = cls(**typed_kwargs(cls, value, section))
    cfg = VLMConfig(**kwargs)
    object.__setattr__(cfg, "source", data)       # what with_overrides starts from (not a field: not saved)
    return cfg


MODEL_KEYS_HINT = "model keys are vision.*, projector.*, decoder.* (e.g. decoder.n_layer) or fusion, max_images"


def all_model_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(VLMConfig) if f.name not in SECTIONS and not f.name.endswith("_id")]
    return keys + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------

def _paper(name, vit_blocks, vit_width, n_layer, n_head, head_dim, vocab_size=4096) -> dict:
    """The NanoVLMs paper (Table 1): conv2 ViT with CLS -> MLP projector -> ONE prefix token -> GPT decoder."""
    return dict(
        name=name,
        vision=dict(image_size=224, patch_size=16, width=vit_width, n_layer=vit_blocks, n_head=8,
                    mlp_hidden=4 * vit_width, patch_stem="conv2", stem_channels=256, use_cls=True, activation="gelu",
                    norm_eps=1e-5, dropout=0.1, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=dict(kind="mlp", source="cls"),
        decoder=dict(flavour="gpt", vocab_size=vocab_size, n_embd=n_head * head_dim, n_layer=n_layer,
                     n_head=n_head, mlp_hidden=4 * n_head * head_dim, max_seq_len=256, dropout=0.1),
        fusion="prefix",
    )


# Presets are raw keyword arguments (gpt-fast style): overrides are applied to them before anything is derived.
PRESETS: dict[str, dict] = {
    "mini": _paper("mini", vit_blocks=1, vit_width=400, n_layer=4, n_head=8, head_dim=12),
    "base": _paper("base", vit_blocks=3, vit_width=512, n_layer=8, n_head=8, head_dim=16),
    "large": _paper("large", vit_blocks=5, vit_width=512, n_layer=10, n_head=16, head_dim=12),
    "nanovlm-222m": dict(
        name="nanovlm-222m",
        vision=dict(image_size=224, patch_size=16, width=768, n_layer=12, n_head=12, mlp_hidden=3072,
                    patch_stem="linear", use_cls=False, activation="gelu_tanh", norm_eps=1e-6),
        projector=dict(kind="pixel_shuffle", source="patches", shuffle_factor=2),
        decoder=dict(flavour="llama", vocab_size=49152, n_embd=576, n_layer=30, n_head=9, n_kv_head=3,
                     mlp_hidden=1536, max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True),
        fusion="placeholder",
    ),
    # Small and fast: trains on 64 px scenes on 2 CPU cores in minutes. The paper's decoder, but the image enters
    # as 16 tokens (8 x 8 patches, pixel-shuffled 2 x 2) instead of the one CLS vector: naming several objects and
    # where they are needs more than one vector, and 16 tokens train twice as fast as 64. The patches come from a
    # small conv net rather than a linear map (it tells shapes apart: 88.6% -> 96.5% of objects named right in the
    # main job), and the image tokens are layer-normed (see ProjectorConfig.output_norm).
    "demo": dict(
        name="demo",
        vision=dict(image_size=64, patch_size=8, width=128, n_layer=2, n_head=4, mlp_hidden=512,
                    patch_stem="convnet", stem_channels=128, use_cls=True, activation="gelu", norm_eps=1e-5,
                    dropout=0.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=dict(kind="pixel_shuffle", source="patches", shuffle_factor=2, output_norm=True),
        decoder=dict(flavour="gpt", vocab_size=1024, n_embd=128, n_layer=3, n_head=4, mlp_hidden=512,
                     max_seq_len=256, dropout=0.0),
        fusion="prefix",
    ),
    # Reading documents (`nanovlm data documents`): the 384 x 256 page read as it is, not squeezed to a square.
    # A ResNet-style stem (batch norm, a residual conv per halving: it learns form where `convnet` does not) turns
    # each 16 x 16-pixel patch (about two printed characters) into a token, one ViT block lets each token see its
    # neighbours (the label beside a value), and all 384 tokens, with their fixed 2-D positions, go to a 4-layer
    # GPT decoder with cosine attention (qk_norm: it lets the decoder look at one token, README "Sixth round")
    # that writes the JSON answer. Training recipe: nanovlm.train.PRESET_RECIPES["documents"].
    "documents": dict(
        name="documents",
        vision=dict(image_size=384, image_height=256, patch_size=16, width=128, n_layer=1, n_head=4, mlp_hidden=512,
                    patch_stem="resnet", stem_channels=128, use_cls=False, position="sincos", activation="gelu",
                    norm_eps=1e-5, dropout=0.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=dict(kind="pixel_shuffle", source="patches", shuffle_factor=1, output_norm=True),
        decoder=dict(flavour="gpt", vocab_size=1024, n_embd=128, n_layer=4, n_head=4, mlp_hidden=512,
                     max_seq_len=640, qk_norm=10.0, dropout=0.0),
        fusion="prefix",
    ),
    # The smallest model that exercises every code path; used by the tests.
    "tiny": dict(
        name="tiny",
        vision=dict(image_size=32, patch_size=8, width=32, n_layer=1, n_head=2, mlp_hidden=64, patch_stem="conv2",
                    use_cls=True, activation="gelu", norm_eps=1e-5, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        projector=dict(kind="mlp", source="patches", hidden_dim=64),
        decoder=dict(flavour="gpt", vocab_size=512, n_embd=32, n_layer=2, n_head=2, mlp_hidden=64, max_seq_len=128),
        fusion="prefix",
    ),
}


def _variant(base: dict, name: str, **sections) -> dict:
    """A preset that is `base` with some keys of its sections changed (the rest kept as they are)."""
    return {**base, "name": name, **{section: {**base[section], **keys} for section, keys in sections.items()}}


# The demo decoder reading an ImageNet-pretrained EfficientNet-Lite0 (its first blocks, to stride 8): 64 tokens of a
# 64 px picture, each with a fixed 2-D position, no pixel shuffle, cosine attention in the decoder (the README's
# "Sixth round": it lets the decoder look at one token). Train it with the weights and the encoder frozen:
# --set vision_init=FILE (`nanovlm convert efficientnet`) --set freeze=vision --set cache_vision=true
# --set weight_decay=0.1 (README, "Visual question answering": 95.8-97.2% on scenes VQA within 15 CPU-minutes
# in three runs of five; not yet every seed).
PRESETS["demo-effnet"] = _variant(
    PRESETS["demo"], "demo-effnet",
    vision=dict(patch_stem="efficientnet_lite0", n_layer=0, use_cls=False, position="sincos",
                image_mean=EFFICIENTNET_MEAN, image_std=EFFICIENTNET_STD),
    projector=dict(shuffle_factor=1),
    decoder=dict(qk_norm=10.0),
)


# The demo decoder reading form without pretraining: the scattering transform's fixed wavelets (edges, their
# orientations and arrangement, nothing learned), each token's coefficients over a view twice its patch
# (scattering_context=1), a batch norm and a fixed random 3 x 3 conv to 512 channels (a linear probe reads a thing's
# shape from one such token at 95.8%, against 90.4% at 128), 64 tokens with a fixed 2-D position table, no pixel
# shuffle, and a four-layer decoder with cosine attention that reads the image tokens but does not rewrite them
# (hold_image_tokens: cheaper steps, and the missing direction, finding a thing by its shape, starts in every seed
# tried). Its training recipe (nanovlm.train.PRESET_RECIPES) freezes the stem, caches it, and adds the max
# read-out on the image tokens. On `nanovlm data shapes --per-thing both` it names the colour and shape of held-out
# things at 95-97% (docs/form.md, fourteenth round).
PRESETS["demo-scattering"] = _variant(
    PRESETS["demo"], "demo-scattering",
    vision=dict(patch_stem="scattering", n_layer=0, use_cls=False, position="sincos", width=512,
                scattering_context=1),
    projector=dict(shuffle_factor=1),
    decoder=dict(n_layer=4, qk_norm=10.0, hold_image_tokens=True),
)

# The paper's Table 2: share of parameters in ViT / projector / decoder, for `nanovlm info`.
PAPER_TABLE2 = {
    "mini": {"params": 5e6, "vision": 0.69, "projector": 0.14, "decoder": 0.17},
    "base": {"params": 16e6, "vision": 0.78, "projector": 0.08, "decoder": 0.16},
    "large": {"params": 25e6, "vision": 0.73, "projector": 0.06, "decoder": 0.21},
}


def from_name(name: str, overrides: dict[str, Any] | None = None) -> VLMConfig:
    """A preset by name, with optional dotted-key overrides (values or strings to parse)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}")
    return build_config(PRESETS[name], overrides)
