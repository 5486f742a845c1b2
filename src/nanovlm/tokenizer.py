"""Tokenizer: a thin wrapper over the `tokenizers` library, plus the prompt formats.

- Tokenizer.train(texts, vocab_size) trains a byte-level BPE offline (the paper presets learn their own).
- Tokenizer.from_file(path) loads any Hugging Face tokenizer.json (e.g. SmolLM2's).
Either way the wrapper makes sure the image placeholder, EOS and PAD tokens exist, and configure(cfg) writes
their ids and the vocabulary size into the model config so the embedding table always covers the tokenizer.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .config import VLMConfig

IMAGE_TOKEN = "<|image|>"
EOS_CANDIDATES = ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<|end_of_text|>")
PAD_TOKEN = "<|pad|>"
CHAT_START, CHAT_END = "<|im_start|>", "<|im_end|>"


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, hf: HFTokenizer, image_token: str = IMAGE_TOKEN, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None):
        self.hf = hf
        self.chat_template = chat_template   # a pretrained LM's own Jinja template (GGUF / tokenizer_config.json)
        vocab = hf.get_vocab(with_added_tokens=True)
        eos_token = eos_token or self.default_eos(vocab)
        pad_token = pad_token or PAD_TOKEN
        # Add what is missing as special tokens: they are never split and never produced by plain text.
        missing = [t for t in dict.fromkeys((image_token, eos_token, pad_token)) if t not in vocab]
        if missing:
            hf.add_special_tokens(missing)
        self.image_token, self.eos_token, self.pad_token = image_token, eos_token, pad_token
        self.image_token_id = hf.token_to_id(image_token)
        self.eos_token_id = hf.token_to_id(eos_token)
        self.pad_token_id = hf.token_to_id(pad_token)
        self.has_chat_template = hf.token_to_id(CHAT_START) is not None and hf.token_to_id(CHAT_END) is not None
        # Text never produces special ids: "<|image|>" typed in a record or a prompt is nine plain characters, not
        # a placeholder. Our own prompt formats insert special tokens by id (encode_conversation).
        hf.encode_special_tokens = True

    @staticmethod
    def default_eos(vocab) -> str:
        """A chat model ends its turns with <|im_end|>; a plain LM with its end-of-text token."""
        chat = CHAT_START in vocab and CHAT_END in vocab
        return CHAT_END if chat else next((t for t in EOS_CANDIDATES if t in vocab), EOS_CANDIDATES[0])

    # ---------------------------------------------------------------- construction

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
              split_digits: bool = False) -> "Tokenizer":
        """Train a byte-level BPE on an iterable of strings. Byte-level means any text can be encoded,
        even characters never seen in training. split_digits: every digit is a token of its own (as in Llama
        and PaLM), so a number read off a page is written one digit per step, never "65" then "4"."""
        hf = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                            if split_digits else byte_level)
        hf.decoder = decoders.ByteLevel()
        specials = [EOS_CANDIDATES[0], PAD_TOKEN, IMAGE_TOKEN]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | os.PathLike, cfg: VLMConfig | None = None, **token_names) -> "Tokenizer":
        """Load a tokenizer.json. With the model's cfg, the special tokens are the ones whose ids it records."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} not found")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception for malformed files
            raise TokenizerError(f"{path} is not a valid tokenizer.json: {e}") from None
        if cfg is not None and cfg.image_token_id >= 0:
            token_names = dict(image_token=hf.id_to_token(cfg.image_token_id),
                               eos_token=hf.id_to_token(cfg.eos_token_id),
                               pad_token=hf.id_to_token(cfg.pad_token_id))
            if None in token_names.values():
                raise TokenizerError(f"{path} does not hold the special token ids recorded in config.json: {token_names}")
        return cls(hf, **token_names)

    def save(self, path: str | os.PathLike):
        self.hf.save(str(path))

    def save_config(self, path: str | os.PathLike, chat_template: str, model_max_length: int):
        """tokenizer_config.json for other tools (transformers' AutoTokenizer, chat UIs): the special tokens and
        the chat template as Jinja, so they build exactly the prompts this model was trained on."""
        import json

        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.eos_token,
                  "pad_token": self.pad_token, "image_token": self.image_token, "bos_token": None,
                  "model_max_length": model_max_length, "chat_template": chat_template}
        Path(path).write_text(json.dumps(config, indent=2, ensure_ascii=False))

    def configure(self, cfg: VLMConfig, multiple_of: int = 64) -> VLMConfig:
        """Return cfg with this tokenizer's special ids, and a decoder vocabulary large enough for every token
        (rounded up to a multiple of 64 for faster matmuls; an embedding table never shrinks below the config)."""
        vocab = max(cfg.decoder.vocab_size if cfg.decoder.vocab_size >= len(self) else 0,
                    -(-len(self) // multiple_of) * multiple_of)
        decoder = dataclasses.replace(cfg.decoder, vocab_size=vocab)
        return dataclasses.replace(cfg, decoder=decoder, image_token=self.image_token,
                                   image_token_id=self.image_token_id, eos_token_id=self.eos_token_id,
                                   pad_token_id=self.pad_token_id)

    # ---------------------------------------------------------------- text <-> ids

    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special tokens written in the text are encoded as their characters."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- prompt formats

    def encode_conversation(self, texts: list[dict], n_image_tokens: int, fusion: str = "prefix",
                            for_generation: bool = False) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation and, for each, whether the loss is taken on it (the assistant's words
        and the end-of-turn token; never the prompt or the image tokens).

        prefix (paper):   [image tokens] user "\\n" assistant <eos> [user "\\n" assistant <eos> ...]
        chat (SmolLM2):   <|im_start|>user\\n[image tokens]user<|im_end|>\\n<|im_start|>assistant\\nanswer<|im_end|>\\n
        With for_generation, the last turn's assistant text is taken as the start of the answer (may be empty)
        and no end-of-turn token follows it, so the model continues from there."""
        use_chat = fusion == "placeholder" and self.has_chat_template
        ids, loss = [], []

        def add(token_ids, take_loss):
            ids.extend(token_ids)
            loss.extend([take_loss] * len(token_ids))

        chat_start, chat_end = self.hf.token_to_id(CHAT_START), self.hf.token_to_id(CHAT_END)
        images = [self.image_token_id] * n_image_tokens
        if not use_chat:
            add(images, False)
        for turn, text in enumerate(texts):
            last = turn == len(texts) - 1
            user, answer = text.get("user", ""), text.get("assistant", "")
            if use_chat:
                add([chat_start, *self.encode("user\n")], False)
                add(images if turn == 0 else [], False)
                add([*self.encode(user), chat_end, *self.encode("\n"), chat_start, *self.encode("assistant\n")], False)
            else:
                add(self.encode(f"{user}\n" if user else ""), False)
            if for_generation and last:
                add(self.encode(answer), False)
                break
            add(self.encode(answer), True)
            add([chat_end if use_chat else self.eos_token_id], True)
            if use_chat:
                add(self.encode("\n"), False)
        return ids, loss

    def prompt_template(self, fusion: str, n_image_tokens: int) -> str:
        """The Jinja chat template (Hugging Face conventions: `messages` with role/content, content a string or a
        list of {"type": "image"} / {"type": "text", "text": ...} parts, `add_generation_prompt`) that renders
        exactly what encode_conversation builds, each image part becoming its n_image_tokens placeholders."""
        image = f"'{self.image_token}' * {n_image_tokens}"
        content = ("{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
                   "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}{{- " + image + " -}}"
                   "{%- else -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}")
        if fusion == "placeholder" and self.has_chat_template:     # ChatML, as SmolLM2 and nanoVLM
            return ("{%- for message in messages -%}{{- '" + CHAT_START + "' + message['role'] + '\\n' -}}" + content
                    + "{{- '" + CHAT_END + "\\n' -}}{%- endfor -%}"
                    "{%- if add_generation_prompt -%}{{- '" + CHAT_START + "assistant\\n' -}}{%- endif -%}")
        # prefix: the user's text and a newline, then the answer and EOS
        return ("{%- for message in messages -%}" + content
                + "{%- if message['role'] == 'user' -%}{%- if message['content'] is string and message['content']"
                  " or message['content'] is not string and message['content'][-1]['type'] == 'text' -%}"
                  "{{- '\\n' -}}{%- endif -%}{%- else -%}{{- '" + self.eos_token + "' -}}{%- endif -%}"
                  "{%- endfor -%}")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            template: str | None = None) -> list[int]:
        """Render messages with a Jinja chat template (by default the LM's own, e.g. from its GGUF) and encode the
        result, special tokens written by the template included (unlike encode(), which never makes them)."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        template = template or self.chat_template
        if template is None:
            raise TokenizerError("this tokenizer has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error     # templates call it on bad input, as in transformers
        text = env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                eos_token=self.eos_token)
        if not hasattr(self, "_with_specials"):   # a twin that parses special tokens, so self.hf stays untouched
            self._with_specials = HFTokenizer.from_str(self.hf.to_str())
            self._with_specials.encode_special_tokens = False
        return self._with_specials.encode(text, add_special_tokens=False).ids


def _raise_template_error(message: str):
    raise TokenizerError(f"chat template: {message}")
