"""The CLI under hostile but realistic input: every case exits 0 with the right output, or 2 with exactly one
`error:` line; never a traceback, never a changed dataset, model or run without --overwrite.

Generated cases (hypothesis) cover --set pairs for model keys and training options and the generation flags;
the named cases are the ones a user met (issue 7)."""
from __future__ import annotations

import hashlib
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.config import all_model_keys
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer
from nanovlm.train import TrainConfig

from cli_helpers import assert_clean, run_cli
from conftest import tiny_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
TRAIN_KEYS = [f.name for f in __import__("dataclasses").fields(TrainConfig)]


def tree_digest(folder: Path) -> str:
    """Names and bytes of every file under folder: equal digests, untouched folder."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tokenizer = Tokenizer.train(["There is a big red ball on the green grass.", "I see two blue boxes."] * 20,
                                vocab_size=300)
    VisionLanguageModel(tokenizer.configure(tiny_config())).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "picture.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


# ------------------------------------------------------------------------------------------ generated cases

texts = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "none", "", "[]", "{}", "[\"vision\"]", "vision,decoder", "abc", "1.5", "-1",
                     "0", "1e9", "nan", "gpt", "llama", "rope", "mlp", "convnet", "resnet", "64", "8"]),
    st.text(string.printable, max_size=12))
model_keys = st.sampled_from(all_model_keys())
train_keys = st.sampled_from(TRAIN_KEYS)
odd_keys = st.text(string.ascii_lowercase + "._", min_size=1, max_size=15)


@FUZZ
@given(pairs=st.lists(st.tuples(st.one_of(model_keys, odd_keys), texts), min_size=1, max_size=3))
def test_info_with_random_model_keys(capsys, pairs):
    code, out, err = run_cli(capsys, "info", "tiny", *[a for k, v in pairs for a in ("--set", f"{k}={v}")])
    assert_clean(code, err)
    if code == 0:
        assert "parameters" in out


@FUZZ
@given(pairs=st.lists(st.tuples(st.one_of(train_keys, model_keys, odd_keys), texts), min_size=1, max_size=3),
       steps=st.one_of(st.none(), st.sampled_from(["1", "0", "-3", "1.5", "abc", "2"])))
def test_train_options_are_parsed_and_checked_before_training(capsys, monkeypatch, small_scenes, tmp_path_factory,
                                                              pairs, steps):
    """The command line up to the TrainConfig and model config; the training itself is replaced by a check."""
    reached = []

    def fake_train(tcfg):
        from nanovlm.config import from_name

        from_name(tcfg.preset, tcfg.model)                # the model config must build too
        reached.append(tcfg)
        return {"steps": tcfg.steps, "train_time_s": 0.0, "stopped_early": False, "final_loss": 1.0,
                "best_val_loss": None, "best": "b", "last": "l", "metrics": "m"}

    monkeypatch.setattr("nanovlm.train.train", fake_train)
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--preset", "tiny", "--data", small_scenes, "--out", out,
            *(["--steps", steps] if steps else []), *[a for k, v in pairs for a in ("--set", f"{k}={v}")]]
    code, _, err = run_cli(capsys, *argv)
    assert_clean(code, err)
    if code == 0:
        tcfg = reached[0]
        assert tcfg.steps >= 1 and tcfg.lr > 0 and tcfg.grad_clip >= 0 and isinstance(tcfg.freeze, list)


gen_values = st.one_of(st.integers(-5, 12).map(str), st.sampled_from(["200", "100000"]),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.sampled_from(["abc", "", "1e400", "0.5", "1", "0"]))


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(["--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"]),
                             gen_values, max_size=3),
       prompt=st.one_of(st.sampled_from(["", "I see", "<|image|>", "<|endoftext|> hi", "<|pad|><|im_start|>"]),
                        st.text(max_size=20)))
def test_generate_with_random_flags_and_prompts(capsys, model_dir, image, flags, prompt):
    code, out, err = run_cli(capsys, "generate", "--model", model_dir, "--image", image, "--prompt", prompt,
                             *[a for k, v in flags.items() for a in (k, v)])
    assert_clean(code, err)
    if code == 0:
        assert out.startswith(prompt.split("\n")[0]) or not prompt.strip()


# ------------------------------------------------------------------------------------------ named cases

@pytest.mark.parametrize("args,message", [
    (["--set", "steps=abc"], "steps must be a whole number"),
    (["--set", "lr=abc"], "lr must be a number"),
    (["--set", "seed=abc"], "seed must be a whole number"),
    (["--set", "steps=1.5"], "steps must be a whole number"),
    (["--set", "model={}"], "model"),
    (["--set", "lr=-1"], "lr must be in (0, 1]"),
    (["--set", "grad_clip=-1"], "grad_clip must be >= 0"),
    (["--set", "decoder.n_head=0"], "decoder.n_head must be >= 1"),
    (["--set", "vision.patch_size=0"], "vision.patch_size"),
    (["--set", "vision.image_size=0"], "vision.image_size"),
    (["--set", "decoder.vocab_size=-5"], "decoder.vocab_size"),
    (["--set", "vision.image_height=-8"], "vision.image_height must be 0 (square) or in 8..4096"),
    (["--set", "vision.image_height=20"], "vision.image_height 20 is not a multiple of patch_size 8"),
    (["--set", "vision.image_height=tall"], "vision.image_height must be a whole number"),
    (["--set", "vision.image_height=24", "--set", "projector.kind=pixel_shuffle"],
     "a grid of 3 x 4 patches is not divisible by projector.shuffle_factor 2"),
    (["--set", "split_digits=maybe"], "split_digits must be true or false"),
    (["--set", "decoder.n_layer=0"], "decoder.n_layer must be >= 1"),
    (["--set", "decoder.qk_norm=-1"], "decoder.qk_norm must be in [0, 1000]"),
    (["--set", "decoder.qk_norm=sharp"], "decoder.qk_norm"),
    (["--set", "vision.position=random"], "vision.position must be one of"),
    (["--set", "vision.position=sincos", "--set", "vision.width=30"], "multiple of 4"),
    (["--set", "steps=5", "--steps", "6"], "steps is given twice"),
    (["--set", "warmup_stepz=5"], "did you mean warmup_steps"),
    (["--set", "freeze=eyes"], "freeze: unknown module"),
    (["--set", "stem_trainable_blocks=-1"], "stem_trainable_blocks must be >= 0"),
    (["--set", "stem_trainable_blocks=some"], "stem_trainable_blocks must be a whole number"),
    (["--set", "stem_trainable_blocks=2", "--set", "freeze=vision"], "freeze=vision fixes all of it"),
    (["--set", "stem_trainable_blocks=2"], "applies to the pretrained vision.patch_stem=efficientnet_lite0"),
    (["--set", "stem_trainable_blocks=9", "--set", "vision.patch_stem=efficientnet_lite0"],
     "but the stem runs 5 blocks at vision.patch_size=8"),
    (["--set", "cache_vision=true"], "cache_vision keeps what of the vision encoder stays unchanged"),
    (["--set", "vision.patch_stem=wavelets"], "vision.patch_stem must be one of"),
    (["--set", "vision.patch_stem=scattering", "--set", "vision.image_size=36", "--set", "vision.patch_size=6"],
     "the scattering stem halves the picture per step: patch_size must be a power of two"),
    (["--set", "vision.patch_stem=scattering", "--set", "vision.scattering_context=4"],
     "vision.scattering_context must be in 0..3"),
    (["--set", "vision.scattering_context=1"], "applies to vision.patch_stem=scattering only"),
    (["--set", "vision.patch_stem=scattering", "--set", "vision.scattering_context=3"],
     "must fit in the picture's shorter side"),
    (["--set", "vision.patch_stem=scattering", "--set", "cache_vision=true", "--set", "max_readout_weight=1"],
     "cannot be combined with cache_vision=true (the read-out can, with max_readout_from=projector)"),
    (["--set", "cache_vision=maybe"], "cache_vision must be true or false"),
    (["--set", "group_by_length=sometimes"], "group_by_length must be true or false"),
    (["--set", "decoder.hold_image_tokens=often"], "decoder.hold_image_tokens must be true or false"),
    (["--set", "decoder.rewritten_image_layers=1"], "applies with decoder.hold_image_tokens=true"),
    (["--set", "decoder.hold_image_tokens=true", "--set", "decoder.rewritten_image_layers=3"],
     "decoder.rewritten_image_layers must be in 0..1"),
    (["--set", "cache_vision=true", "--set", "freeze=vision", "--set", "contrastive_weight=1"],
     "cannot be combined with cache_vision=true (the read-out can, with max_readout_from=projector)"),
    (["--steps", "abc"], "--steps must be a whole number"),
    (["--device", "tpu"], "device must be one of"),
    (["--set", "vision_init=no/such/encoder.safetensors"], "vision_init no/such/encoder.safetensors: no such"),
    (["--set", "max_readout_weight=-1"], "max_readout_weight must be in [0, 100]"),
    (["--set", "max_readout_weight=many"], "max_readout_weight must be a number"),
    (["--set", "max_readout_words=questions"], "max_readout_words must be one of"),
    (["--set", "max_readout_pool=mean"], "max_readout_pool must be one of"),
    (["--set", "max_readout_from=decoder"], "max_readout_from must be one of"),
    (["--set", "max_readout_weight=1", "--set", "pack=true"], "cannot be combined with pack=true"),
    (["--set", "max_readout_weight=1", "--set", "decoder.n_embd=64"], "needs vision.width (32) == decoder.n_embd (64)"),
    (["--set", "max_readout_weight=1", "--language", "no/such/model.gguf"], "cannot be combined with a pretrained --language"),
    (["--set", "language_init=random"], "language_init=random starts a pretrained language model's architecture"),
    (["--set", "language_init=scratch", "--language", "no/such/model.gguf"], "language_init must be one of"),
])
def test_bad_training_options_are_one_error_before_any_file(capsys, small_scenes, tmp_path, args, message):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--data", small_scenes, "--out", out, *args)
    assert_clean(code, err, allowed=(2,))
    assert message in err, err
    assert not out.exists(), "nothing may be written before the options are checked"


def test_typed_set_values_reach_the_config():
    tcfg = TrainConfig.from_options({"freeze": "vision", "progress": "false", "steps": "7", "lr": "3e-4",
                                     "decoder.flavour": "llama"})
    assert tcfg.freeze == ["vision"] and tcfg.progress is False and tcfg.steps == 7 and tcfg.lr == 3e-4
    from nanovlm.config import from_name

    cfg = from_name("tiny", tcfg.model)
    # a flavour override derives every switch afresh: no gpt/llama hybrid
    assert (cfg.decoder.norm, cfg.decoder.mlp, cfg.decoder.position_embedding, cfg.decoder.bias) == \
        ("rmsnorm", "swiglu", "rope", False)


def test_train_never_replaces_a_run_or_its_tokenizer_without_overwrite(capsys, small_scenes, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--data", small_scenes, "--out", out, "--steps", "1", "--quiet",
            "--threads", "1", "--batch-size", "4", "--set", "eval_batches=1", "--set", "warmup_steps=0"]
    assert run_cli(capsys, *base)[0] == 0
    before = tree_digest(out)
    code, _, err = run_cli(capsys, *base)
    assert_clean(code, err, allowed=(2,))
    assert "--resume" in err and "--overwrite" in err
    assert tree_digest(out) == before
    code, _, err = run_cli(capsys, *base, "--overwrite")
    assert code == 0, err


def test_demo_refuses_to_replace_another_dataset(capsys, small_scenes, tmp_path):
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(small_scenes, out / "data")
    before = tree_digest(out)
    code, _, err = run_cli(capsys, "demo", "--out", out, "--n", "40", "--steps", "1", "--eval-scenes", "2")
    assert_clean(code, err, allowed=(2,))
    assert "holds another dataset" in err and tree_digest(out) == before


@pytest.mark.parametrize("args,message", [
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--max-new-tokens", "-1"], "max_new_tokens"),
    (["--max-new-tokens", "100000"], "max_new_tokens"),
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-p", "2"], "top_p"),
    (["--top-p", "0"], "top_p"),
    (["--top-k", "-1"], "top_k"),
    (["--prompt", "word " * 400], "context"),
])
def test_bad_generation_settings(capsys, model_dir, image, args, message):
    code, _, err = run_cli(capsys, "generate", "--model", model_dir, "--image", image, *args)
    assert_clean(code, err, allowed=(2,))
    assert message in err.lower(), err


def test_cuda_without_cuda_is_one_error(capsys, model_dir, image):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "generate", "--model", model_dir, "--image", image, "--device", "cuda")
    assert_clean(code, err, allowed=(2,))
    assert "CUDA" in err


@pytest.mark.parametrize("argv,message", [
    (["data", "scenes", "--out", "{tmp}/s", "--image-size", "20000"], "image"),
    (["data", "scenes", "--out", "{tmp}/s", "--n", "0"], "n"),
    (["data", "scenes", "--out", "{tmp}/s", "--style", "vqa", "--questions", "17"], "within 1..16"),
    (["data", "scenes", "--out", "{tmp}/s", "--style", "vqa", "--questions", "6-4"], "range like"),
    (["data", "scenes", "--out", "{tmp}/s", "--style", "vqa", "--questions", "many"], "questions must be"),
    (["data", "scenes", "--out", "{tmp}/s", "--questions", "8"], "questions is for style vqa"),
    (["info", "gigantic"], "unknown preset"),
    (["generate", "--model", "{tmp}/none", "--image", "{tmp}"], "image"),
    (["nonsense"], "invalid choice"),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--precision", "half"], "precision must be one of auto"),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--precision", "fp16", "--device", "cpu"],
     "precision fp16 needs CUDA"),
    (["bench", "tiny", "--train-dtype", "half"], "invalid choice"),
    (["bench", "tiny", "--decode-dtype", "fp16"], "invalid choice"),
])
def test_misc_bad_inputs(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert_clean(code, err, allowed=(2,))
    assert message in err, err


def test_version_and_help(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("nanovlm ")
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "(default: 1500)" in out and "(default: auto)" in out
