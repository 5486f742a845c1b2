"""Model folders for other tools: the model card (README.md metadata), tokenizer_config.json's Jinja chat template
(renders exactly our prompts), Hub ids in from_pretrained (downloaded when online, one clear error offline), and
training from pretrained backbones through the CLI."""
import json
from pathlib import Path

import pytest
import torch

from nanovlm.model.vlm import CheckpointError, VisionLanguageModel
from nanovlm.tokenizer import Tokenizer

from conftest import tiny_config

TEXTS = ["There is a big red ball on the green grass.", "I see two small blue boxes next to a tree."] * 20


def _model():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    model = VisionLanguageModel(tok.configure(tiny_config()))
    model.tokenizer = tok
    return model


def _render(template: str, messages, add_generation_prompt=False) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment   # what transformers' apply_chat_template uses

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt)


CONVERSATION = [{"user": "What is it?", "assistant": "a red ball"}, {"user": "Where?", "assistant": "on the left"}]


def _messages(conversation, with_image=True):
    messages = []
    for turn, text in enumerate(conversation):
        content = [{"type": "image"}] if turn == 0 and with_image else []
        messages += [{"role": "user", "content": content + [{"type": "text", "text": text["user"]}]},
                     {"role": "assistant", "content": text["assistant"]}]
    return messages


@pytest.mark.parametrize("fusion", ["prefix", "placeholder"])
def test_chat_template_renders_our_prompts(fusion):
    """The Jinja template in tokenizer_config.json, rendered as transformers renders it, gives the very token ids
    of encode_conversation (training) and of the generation prompt (inference)."""
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    if fusion == "placeholder":
        tok.hf.add_special_tokens(["<|im_start|>", "<|im_end|>"])
        tok = Tokenizer(tok.hf)
    template = tok.prompt_template(fusion, n_image_tokens=4)
    ids, _ = tok.encode_conversation(CONVERSATION, 4, fusion=fusion)
    assert tok.apply_chat_template(_messages(CONVERSATION), add_generation_prompt=False, template=template) == ids
    prompt, _ = tok.encode_conversation(CONVERSATION[:1] + [{"user": "Where?", "assistant": ""}], 4, fusion=fusion,
                                        for_generation=True)
    messages = _messages(CONVERSATION[:1]) + [{"role": "user", "content": "Where?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, template=template) == prompt
    assert _render(template, messages, add_generation_prompt=True) == tok.decode(prompt, skip_special_tokens=False)


def test_model_card_round_trip(tmp_path):
    model = _model()
    model.card = {"base_model": ["HuggingFaceTB/SmolLM2-135M-Instruct"], "datasets": ["scenes-vqa"],
                  "eval_results": [{"task": "visual-question-answering", "dataset": "scenes-vqa",
                                    "metric": "accuracy", "value": 0.93}]}
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    front = card.split("---")[1]
    import yaml
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "nanovlm" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" or meta["base_model"] == \
        ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert meta["parameters"] == model.num_parameters()["total"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.93
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == model.tokenizer.eos_token and "{%" in config["chat_template"]
    loaded = VisionLanguageModel.from_pretrained(tmp_path)
    assert loaded.card["base_model"] == model.card["base_model"] and loaded.card["datasets"] == ["scenes-vqa"]
    assert loaded.card["eval_results"][0]["value"] == 0.93


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(CheckpointError, match="not reachable .offline."):
        VisionLanguageModel.from_pretrained("someone/some-vlm")


def test_hub_id_downloads_a_snapshot(tmp_path, monkeypatch):
    """Online, a repo id goes through huggingface_hub.snapshot_download (stood in for here by a local folder)."""
    import huggingface_hub

    from nanovlm import hub

    _model().save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, local_files_only):
        calls.append((repo_id, local_files_only, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=3.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = VisionLanguageModel.from_pretrained("someone/some-vlm")
    assert calls == [("someone/some-vlm", False, hub.DOWNLOAD_PATTERNS)]
    assert "*.bin" not in hub.DOWNLOAD_PATTERNS and model.tokenizer is not None


def chat_lm_and_vqa_data(tmp_path) -> Path:
    """A tiny Llama chat LM written as a GGUF (vocabulary 280, tied embeddings, GQA) and 24 scenes VQA samples in
    tmp_path/data; returns the GGUF's path."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from gguf_helpers import tiny_bpe, write_llama_gguf

    from nanovlm.data.synth import make_scenes

    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=280, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024))
    make_scenes(tmp_path / "data", n=24, style="vqa", image_size=32, progress=False)
    return write_llama_gguf(tmp_path / "lm.gguf", llama, tiny_bpe(280))


def test_train_from_a_pretrained_lm_through_the_cli(tmp_path, capsys):
    """nanovlm train --language GGUF: the LM's tokenizer and chat format, the recipe's low decoder rate, a model
    card naming the data; the trained folder answers."""
    gguf_path = chat_lm_and_vqa_data(tmp_path)
    from gguf_helpers import tiny_bpe

    from nanovlm.cli import main
    from nanovlm.predict import complete, open_image

    code = main(["train", "--preset", "tiny", "--language", str(gguf_path), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2", "--quiet",
                 "--set", "eval_every=3", "--set", "eval_batches=1", "--set", "warmup_steps=1"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert settings["lr_decoder"] == 5e-5 and settings["lr_projector"] is None      # the projector at lr
    model = VisionLanguageModel.from_pretrained(tmp_path / "run" / "best")
    assert model.cfg.fusion == "placeholder" and model.cfg.image_token_id == 280
    assert model.tokenizer.encode("the red ball") == tiny_bpe(280).encode("the red ball").ids
    assert "datasets:\n- data" in (tmp_path / "run" / "best" / "README.md").read_text()
    image = open_image(sorted(Path(tmp_path / "data" / "images").iterdir())[0])
    assert isinstance(complete(model, [image], questions=["What colour is the ball?"], max_new_tokens=3)[0], str)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_language_init_random_keeps_the_architecture_and_tokenizer_not_the_weights(tmp_path, capsys):
    """--set language_init=random (the control run): the LM's shapes, tokenizer and chat format with fresh weights,
    trained at the fresh parts' rate."""
    gguf_path = chat_lm_and_vqa_data(tmp_path)
    from nanovlm.cli import main
    from nanovlm.convert.backbones import build_vlm

    pretrained = build_vlm(gguf_path, preset="tiny")
    fresh = build_vlm(gguf_path, preset="tiny", language_weights=False)
    assert fresh.cfg == pretrained.cfg and len(fresh.tokenizer) == len(pretrained.tokenizer)
    fresh_state, pretrained_state = fresh.decoder.state_dict(), pretrained.decoder.state_dict()
    assert fresh_state.keys() == pretrained_state.keys()
    assert all(fresh_state[k].shape == pretrained_state[k].shape for k in fresh_state)
    weights = [k for k in fresh_state if "norm" not in k]          # norms start at 1 either way
    assert weights and not any(torch.equal(fresh_state[k], pretrained_state[k]) for k in weights)

    code = main(["train", "--preset", "tiny", "--language", str(gguf_path), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--quiet",
                 "--set", "language_init=random", "--set", "eval_every=2", "--set", "eval_batches=1",
                 "--set", "warmup_steps=1"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert settings["language_init"] == "random" and settings["lr_decoder"] is None    # fresh: trained at lr
    model = VisionLanguageModel.from_pretrained(tmp_path / "run" / "best")
    assert model.cfg.image_token_id == 280 and model.cfg.fusion == "placeholder"
