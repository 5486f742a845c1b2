"""Fields from a document image as JSON, with the model's confidence in each: the library call behind
`nanovlm extract` (and the serving endpoint /v1/extract-fields).

    model = VisionLanguageModel.from_pretrained("runs/documents/best")
    extract_fields(model, open_image("form.jpg"), ["name", "pan"])
    # -> {"fields": {"name": "Priya Sharma", "pan": "ABCPS1234F"}, "confidence": {"name": 0.98, "pan": 0.91},
    #     "valid_json": True}
"""
from __future__ import annotations

import re

from PIL import Image

from .config import ConfigError
from .data.documents.records import fields_prompt
from .evaluate.fields import field_confidences, parse_answer
from .predict import complete

FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")


def parse_field_names(text: str) -> list[str]:
    """"name, pan,date_of_birth" -> ["name", "pan", "date_of_birth"]; a bad list is one ConfigError."""
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or not all(names):
        raise ConfigError(f"--fields needs a comma-separated list of field names, e.g. name,pan; got {text!r}")
    bad = [n for n in names if not FIELD_NAME.fullmatch(n)]
    if bad:
        raise ConfigError(f"field name {bad[0]!r} is not valid: use lower-case letters, digits and _ "
                          "(e.g. date_of_birth)")
    if len(set(names)) != len(names):
        raise ConfigError(f"--fields names a field twice: {text!r}")
    return names


def extract_fields(model, image: Image.Image, fields: list[str], max_new_tokens: int | None = None) -> dict:
    """Ask the model for `fields` (the prompt of the documents' `fields` style) and read its JSON answer.
    Fields the answer lacks are None; an answer that is not JSON gives all None, valid_json False and the raw text."""
    question = fields_prompt(fields)
    budget = max_new_tokens or min(40 * len(fields) + 8, model.cfg.decoder.max_seq_len // 2)
    answer = complete(model, [image], questions=[question], max_new_tokens=budget)[0]
    parsed = parse_answer(answer)
    confidence = field_confidences(model, image, question, answer) if parsed is not None else {}
    result = {"fields": {k: (parsed or {}).get(k) for k in fields},
              "confidence": {k: round(confidence[k], 4) for k in fields if k in confidence},
              "valid_json": parsed is not None}
    if parsed is None:
        result["raw"] = answer
    return result
