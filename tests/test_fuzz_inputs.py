"""The library's input edges under generated input (hypothesis): every case gives a correct result or the one
clear error class of its edge, never another exception.

    records.jsonl lines  -> records, or DatasetFormatError (then a training sample, or DatasetFormatError)
    image files          -> an RGB image, or ImageError
    config.json dicts    -> a model, or CheckpointError
    generation options   -> completions, or ConfigError
"""
from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nanovlm.config import ConfigError, VLMConfig
from nanovlm.data.format import DatasetFormatError, read_records
from nanovlm.data.loader import VLMDataset
from nanovlm.images import ImageError, open_image
from nanovlm.model.vlm import CheckpointError, VisionLanguageModel
from nanovlm.predict import complete
from nanovlm.sampling import GenerationConfig
from nanovlm.tokenizer import Tokenizer

from conftest import tiny_config


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


TEXTS = ["There is a big red ball on the green grass.", "I see two small blue boxes next to a tree."] * 20
SPECIAL_WORDS = ["<|image|>", "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "\n", "\x00", "é", "🐱"]
json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
user_text = st.lists(st.sampled_from(SPECIAL_WORDS) | st.text(max_size=12), max_size=6).map("".join)


@pytest.fixture(autouse=True)
def one_thread(_deterministic):
    torch.set_num_threads(1)     # tiny models and small images: thread hand-offs cost more than they give


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A dataset folder with two real images; each case writes its own records.jsonl into it."""
    path = tmp_path_factory.mktemp("records")
    Image.new("RGB", (40, 30), "red").save(path / "a.png")
    Image.new("RGB", (30, 40), "blue").save(path / "b.png")
    (path / "not-an-image.png").write_text("hello")
    return path


# ----------------------------------------------------------------------------------------------- records.jsonl

image_paths = st.sampled_from(["a.png", "b.png", "missing.png", "not-an-image.png", "../a.png", "/etc/passwd",
                               "", "images\\x.png", "C:/x.png"]) | st.text(max_size=10)
turns = st.fixed_dictionaries({"user": user_text, "assistant": user_text}) | json_values
records = st.fixed_dictionaries(
    {"id": st.text(max_size=6) | json_scalars, "images": st.lists(image_paths, max_size=3) | json_values,
     "texts": st.lists(turns, max_size=3) | json_values},
    optional={"split": st.sampled_from(["train", "val", "test", "dev", ""]) | json_scalars, "meta": json_values,
              "extra": json_values})
bad_lines = (records.map(lambda r: json.dumps(r, ensure_ascii=False).encode())
             | json_values.map(lambda v: json.dumps(v).encode())
             | st.binary(max_size=40)
             | records.map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2]))   # cut mid-line
good_records = st.fixed_dictionaries(
    {"id": st.uuids().map(str), "images": st.lists(st.sampled_from(["a.png", "b.png"]), max_size=2),
     "texts": st.lists(st.fixed_dictionaries({"user": user_text, "assistant": user_text.map("ok {}".format)}),
                       min_size=1, max_size=2)},
    optional={"split": st.sampled_from(["train", "val", "test"]), "meta": st.dictionaries(st.text(), json_values)})
# about half the files are valid, the others hide one bad line among good ones
files = st.tuples(st.lists(good_records.map(lambda r: json.dumps(r).encode()), min_size=1, max_size=3),
                  st.none() | bad_lines, st.integers(0, 3)).map(
    lambda t: t[0] if t[1] is None else t[0][: t[2]] + [t[1]] + t[0][t[2]:])


@fuzz(300)
@given(files)
def test_records_lines_are_valid_or_one_format_error(folder, tokenizer, lines):
    (folder / "records.jsonl").write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        found = read_records(folder)
    except DatasetFormatError as e:
        assert "records.jsonl" in str(e) and "\n" not in str(e)
        return
    cfg = tokenizer.configure(tiny_config())
    try:
        dataset = VLMDataset(folder, tokenizer, cfg, split=None)
        samples = [dataset[i] for i in range(len(dataset))]
    except DatasetFormatError as e:
        assert "\n" not in str(e)
        return
    assert len(samples) == len(found)
    for sample, record in zip(samples, found):
        placeholders = int((sample["input_ids"] == cfg.image_token_id).sum())
        assert placeholders == len(record["images"]) * cfg.image_tokens_per_image   # user text adds none


# ----------------------------------------------------------------------------------------------- images

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]
FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
           "GIF": ("L", "P"), "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"),
           "WEBP": ("RGB", "RGBA"), "BMP": ("1", "L", "P", "RGB")}


def encoded_image(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.new(mode, size)
    if mode in ("L", "RGB", "RGBA", "CMYK", "LA", "YCbCr", "P"):
        bands = len(image.getbands())
        data = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
        image = Image.frombytes(mode, size, data.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


valid_images = st.sampled_from([(f, m) for f, modes in FORMATS.items() for m in modes]).flatmap(
    lambda fm: st.tuples(st.just(fm[0]), st.just(fm[1]), st.tuples(st.integers(1, 70), st.integers(1, 70)),
                         st.integers(0, 2**32 - 1)))


@fuzz(150)
@given(valid_images, st.sampled_from([None, 8, 32]))
def test_valid_images_of_any_mode_and_size_open_as_rgb(tmp_path_factory, spec, min_size):
    fmt, mode, size, seed = spec
    path = tmp_path_factory.getbasetemp() / f"valid.{fmt.lower()}"
    path.write_bytes(encoded_image(mode, size, fmt, seed))
    image = open_image(path, min_size=min_size)
    assert image.mode == "RGB"
    if min_size is None or min(size) < 2 * min_size:
        assert image.size == size
    else:
        assert min(image.size) >= min_size


@fuzz(250)
@given(st.data())
def test_random_or_damaged_image_bytes_give_rgb_or_one_image_error(tmp_path_factory, data):
    if data.draw(st.booleans()):
        content = data.draw(st.binary(max_size=300))
    else:
        fmt, mode, size, seed = data.draw(valid_images)
        content = bytearray(encoded_image(mode, size, fmt, seed))
        for _ in range(data.draw(st.integers(0, 4))):            # flip some bytes
            content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
        content = bytes(content[: data.draw(st.integers(0, len(content)))])  # and maybe cut the file
    path = tmp_path_factory.getbasetemp() / "fuzzed.img"
    path.write_bytes(content)
    try:
        image = open_image(path, max_pixels=200_000)
    except ImageError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert image.mode == "RGB" and image.width * image.height <= 200_000


# ----------------------------------------------------------------------------------------------- config.json

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    tokenizer = Tokenizer.train(TEXTS, vocab_size=300)
    model = VisionLanguageModel(tokenizer.configure(tiny_config())).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder, json.loads((folder / "config.json").read_text())


def mutate(config: dict, draw) -> dict:
    """Change, drop or add a few keys anywhere in the config, with values that are plausible or wild."""
    config = json.loads(json.dumps(config))
    sections = [config] + [v for v in config.values() if isinstance(v, dict)]
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(sections))
        key = draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
        action = draw(st.sampled_from(["set", "set", "drop"]))
        if action == "drop":
            target.pop(key, None)
        else:
            target[key] = draw(st.integers(-5, 5000) | st.sampled_from([0, 1, 2, 16, 64, "gpt", "llama", "rope"])
                               | json_values)
    return config


@fuzz(150)
@given(st.data())
def test_random_config_json_gives_a_model_or_one_checkpoint_error(saved_model, tmp_path_factory, data):
    folder, original = saved_model
    config = mutate(original, data.draw)
    case = tmp_path_factory.getbasetemp() / "case"
    case.mkdir(exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json"):
        target = case / name
        if not target.exists():
            target.symlink_to(folder / name)
    (case / "config.json").write_text(json.dumps(config))
    try:
        VLMConfig.from_dict(config)
    except ConfigError:
        pass                                      # from_pretrained must say the same as a CheckpointError
    try:
        model = VisionLanguageModel.from_pretrained(case)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    except Exception as e:  # noqa: BLE001 - the tokenizer's own user error is the one other allowed answer
        from nanovlm.tokenizer import TokenizerError
        assert isinstance(e, TokenizerError), repr(e)
        return
    assert model.cfg.decoder.vocab_size >= len(model.tokenizer)


# ----------------------------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def small_model():
    tokenizer = Tokenizer.train(TEXTS, vocab_size=300)
    model = VisionLanguageModel(tokenizer.configure(tiny_config())).eval()
    model.tokenizer = tokenizer
    return model


wild = (st.integers(-10, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.none()
        | st.sampled_from([0, 1, 0.5, 1e-30, 1e300, True, "1", -0.0, [1]]))
generation_options = st.fixed_dictionaries({}, optional={   # each option: a sensible value or a wild one
    # short answers keep decoding cheap; the large values test the context check, which needs no decoding
    "max_new_tokens": st.integers(1, 4) | st.sampled_from([0, -1, 100, 128, 400, 10**9, 1.5, None, True, "8"]),
    "temperature": st.floats(0, 5) | wild, "top_k": st.integers(1, 400) | wild,
    "top_p": st.floats(0.001, 1) | wild, "seed": st.integers(0, 2**63 - 1) | st.integers(-5, 2**64) | wild,
    "stop": st.none() | st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2)})


@fuzz(100)
@given(generation_options, user_text)
def test_random_generation_options_complete_or_one_config_error(small_model, options, prompt):
    options = {"max_new_tokens": 4, **{k: v for k, v in options.items() if not (k == "stop" and v is None)}}
    try:
        generation = GenerationConfig(**options)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert generation.max_new_tokens >= 1 and math.isfinite(generation.temperature)
    image = Image.new("RGB", (32, 32), "green")
    try:
        out = complete(small_model, [image], answer_starts=[prompt], generation=generation)
    except ConfigError as e:
        assert "context" in str(e)                    # only the context can still refuse a valid config
        return
    assert isinstance(out[0], str) and not any(s in out[0] for s in generation.stop)
