"""Field extraction scored field by field: `nanovlm eval fields`.

A `fields` (or `checks`) record asks for some fields of a document and its answer is one JSON object; the model's
answer is parsed as JSON and every requested field is compared with the ground truth:
- field exact match (the value exactly as printed), whole-document exact match (every field right),
- character error rate (Levenshtein distance / length of the true value; a missing field counts 1.0),
- invalid-JSON rate (answers that are not one JSON object: all their fields count wrong).
`qa` and `read` records are scored too, each answer as one field (the key the question asks about).

Confidence: the probability the model gives to a field's value, i.e. the product of the probabilities of the
tokens that spell it, from one teacher-forced forward pass over the answer it generated. Calibration then reads:
"keep only fields above confidence t: you keep this share of the fields, and this share of those is right",
so a user can send the low-confidence fields to a person.

The pure functions (parse_answer, value_spans, score_answer, calibration, summarize) need no model.
"""
from __future__ import annotations

import json
import math
from rapidfuzz.distance import Levenshtein

from ..data import format as fmt
from .runner import Item, Scorer, evaluate, register_scorer

THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)


# -----------------------------------------------------------------------------
# reading an answer

def parse_answer(text: str) -> dict | None:
    """The answer as a dict, or None when it is not exactly one JSON object (whitespace around it allowed)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span [start, end) of each top-level value in a JSON object's text, quotes included:
    '{"a": "x1"}' -> {"a": (6, 10)}. Empty when the text is not a JSON object."""
    decoder = json.JSONDecoder()
    spans = {}
    i = len(text) - len(text.lstrip())
    if not text[i:i + 1] == "{":
        return {}
    i += 1
    try:
        while True:
            while text[i].isspace() or text[i] == ",":
                i += 1
            if text[i] == "}":
                return spans
            key, i = decoder.raw_decode(text, i)
            while text[i].isspace() or text[i] == ":":
                i += 1
            start = i
            _, i = decoder.raw_decode(text, i)
            spans[str(key)] = (start, i)
    except (json.JSONDecodeError, IndexError, ValueError):
        return spans


def character_error_rate(predicted: str, reference: str) -> float:
    return Levenshtein.distance(predicted, reference) / max(len(reference), 1)


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def score_answer(answer: str, reference: dict, confidences: dict | None = None, plain: bool = False) -> dict:
    """Score one answer against the true {field: value}. plain=True: the answer is the bare value of the one
    reference field (a qa question), not JSON. Values must match exactly, type included (true is not "true")."""
    if plain:
        (key, truth), = reference.items()
        predicted, valid = {key: answer.strip()}, True
    else:
        predicted = parse_answer(answer)
        valid = predicted is not None
        predicted = predicted or {}
    fields = {}
    for key, truth in reference.items():
        given = key in predicted
        value = predicted.get(key)
        fields[key] = {"exact": given and value == truth and type(value) is type(truth),
                       "cer": character_error_rate(_as_text(value), _as_text(truth)) if given else 1.0,
                       "predicted": value, "confidence": (confidences or {}).get(key)}
    return {"valid_json": valid, "exact": valid and all(f["exact"] for f in fields.values()), "fields": fields}


# -----------------------------------------------------------------------------
# summing up

def calibration(pairs: list[tuple[float, bool]], thresholds=THRESHOLDS) -> dict:
    """{threshold: {"kept": share of fields with confidence >= t, "accuracy": exact-match rate among them}}."""
    table = {}
    for t in thresholds:
        kept = [correct for confidence, correct in pairs if confidence >= t]
        table[f">= {t:g}"] = {"kept": len(kept) / len(pairs) if pairs else 0.0,
                             "accuracy": sum(kept) / len(kept) if kept else None, "n": len(kept)}
    return table


def _rates(scores: list[dict]) -> dict:
    fields = [f for s in scores for f in s["fields"].values()]
    return {"n": len(scores), "field_exact": sum(f["exact"] for f in fields) / max(len(fields), 1),
            "document_exact": sum(s["exact"] for s in scores) / max(len(scores), 1),
            "cer": sum(f["cer"] for f in fields) / max(len(fields), 1)}


def summarize(scores: list[dict], groups: list[dict] | None = None) -> dict:
    """Overall rates, per field, per kind / layout / style (from `groups`, one dict per score), and calibration."""
    fields = [(k, f) for s in scores for k, f in s["fields"].items()]
    summary = {"answers": len(scores), "fields": len(fields), **{k: v for k, v in _rates(scores).items() if k != "n"},
               "invalid_json": sum(not s["valid_json"] for s in scores) / max(len(scores), 1)}
    by_field = {}
    for key, f in fields:
        by_field.setdefault(key, []).append(f)
    summary["by_field"] = {k: {"n": len(v), "exact": sum(f["exact"] for f in v) / len(v),
                               "cer": sum(f["cer"] for f in v) / len(v)} for k, v in sorted(by_field.items())}
    for name in ("kind", "layout", "style"):
        keyed = {}
        for score, group in zip(scores, groups or []):
            if group.get(name) is not None:
                keyed.setdefault(group[name], []).append(score)
        if keyed:
            summary[f"by_{name}"] = {k: _rates(v) for k, v in sorted(keyed.items())}
    pairs = [(f["confidence"], f["exact"]) for _, f in fields if f["confidence"] is not None]
    if pairs:
        summary["calibration"] = calibration(pairs)
    return summary


# -----------------------------------------------------------------------------
# confidence from the model

def field_confidences(model, image, question: str, answer: str) -> dict[str, float]:
    """Each JSON field's probability under the model: one teacher-forced pass over (image, question, answer),
    then the product of the probabilities of the answer tokens that overlap the field's value span.
    A plain (non-JSON) answer gets one entry, "": the probability of the whole answer."""
    import torch

    from ..data.transforms import to_tensor

    tokenizer = model.tokenizer
    answer_ids = tokenizer.encode(answer)
    ids, loss_mask = tokenizer.encode_conversation([{"user": question, "assistant": answer}],
                                                   model.cfg.image_tokens_per_image, fusion=model.cfg.fusion)
    first = loss_mask.index(True)           # the answer's tokens start here, its end-of-turn token follows them
    if ids[first:first + len(answer_ids)] != answer_ids:
        raise ValueError("the answer's tokens are not where encode_conversation put them")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixels = to_tensor(image, model.cfg.vision)[None].to(device, dtype)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids], device=device), pixels)
    # the token at position p is predicted at p - 1
    log_probs = torch.log_softmax(logits[0, first - 1:first - 1 + len(answer_ids)].float(), dim=-1)
    token_log_probs = log_probs.gather(1, torch.tensor(answer_ids, device=device)[:, None])[:, 0].tolist()
    ends = [len(tokenizer.decode(answer_ids[:i + 1])) for i in range(len(answer_ids))]
    starts = [0] + ends[:-1]
    spans = value_spans(answer) or ({"": (0, len(answer))} if answer else {})
    return {key: math.exp(sum(lp for lp, s, e in zip(token_log_probs, starts, ends) if s < end and e > start))
            for key, (start, end) in spans.items()}


# -----------------------------------------------------------------------------
# the registered task

@register_scorer
class FieldsScorer(Scorer):
    name = "fields"
    description = ("extract fields of synthetic documents as JSON (and answer their checks and questions); per-field "
                   "and whole-document exact match, character error rate, invalid JSON, confidence calibration")
    max_new_tokens = 160
    headline = "field_exact"        # what `nanovlm train --set select_by=fields` keeps the best checkpoint by
    options = {"confidence": {"help": "1: give every field the model's confidence (one extra forward pass per "
                                      "answer) and report calibration; 0: skip it", "default": 1, "type": int}}
    model, data = None, None

    def attach(self, model, data):
        # the runner hands over the model and the dataset folder: confidence needs both
        self.model, self.data = model, data

    def items(self, record: dict) -> list[Item]:
        meta = record.get("meta", {})
        group = {k: meta.get(k) for k in ("kind", "layout", "style")}
        if isinstance(meta.get("answer"), dict):
            turn = record["texts"][0]
            return [Item(id=record["id"], images=record["images"], question=turn["user"], reference=meta["answer"],
                         meta={**group, "plain": False})]
        questions = meta.get("questions")
        if meta.get("style") in ("qa", "read") and isinstance(questions, list):
            return [Item(id=f"{record['id']}#{k}", images=record["images"], question=turn["user"],
                         reference={q["key"]: q["answer"]}, meta={**group, "plain": True})
                    for k, (turn, q) in enumerate(zip(record["texts"], questions))]
        return []

    def new_tokens(self, items: list[Item], tokenizer) -> int:
        longest = max(len(tokenizer.encode(json.dumps(i.reference, ensure_ascii=False))) for i in items)
        return longest + 16

    def no_items_hint(self) -> str:
        return "Make documents with `nanovlm data documents --style fields` (or checks, qa)."

    def score(self, answer: str, item: Item) -> dict:
        confidences = None
        if self.confidence and self.model is not None and self.data is not None and item.images:
            image = fmt.load_image(self.data, item.images[0])
            found = field_confidences(self.model, image, item.question, answer)
            # a field the answer does not give (or an answer that is not JSON) has confidence 0: route it to a person
            confidences = {key: found.get("" if item.meta["plain"] else key, 0.0) for key in item.reference}
        return score_answer(answer, item.reference, confidences, plain=item.meta["plain"])

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        summary = summarize(scores, [i.meta for i in items])
        errors = first_errors(scores, items)
        if errors:
            summary["first_errors"] = errors
        return summary

    def format_value(self, key: str, value) -> str:
        if key in ("truth", "read"):
            return json.dumps(value, ensure_ascii=False)
        return super().format_value(key, value)


def first_errors(scores: list[dict], items: list[Item], n: int = 8) -> dict:
    """The first n wrong fields: {"<id> <field>": {"truth", "read", "confidence"}}."""
    errors = {}
    for score, item in zip(scores, items):
        for key, f in score["fields"].items():
            if not f["exact"] and len(errors) < n:
                errors[f"{item.id} {key}"] = {"truth": item.reference[key], "read": f["predicted"],
                                              "confidence": f["confidence"]}
    return errors


def evaluate_fields(model, data, split: str = "test", limit: int | None = None, batch_size: int = 32,
                    confidence: bool = True, progress: bool = True) -> dict:
    """Run the fields task on a documents folder (what `nanovlm eval fields` does)."""
    return evaluate(model, data, FieldsScorer(confidence=int(confidence)), split=split, limit=limit,
                    batch_size=batch_size, progress=progress)
