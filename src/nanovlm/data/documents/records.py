"""The three record styles of a document: what the user asks and what the right answer is.

- fields: "Extract as JSON: name, pan" -> one JSON object with exactly those keys, values as printed
- qa:     questions a client or reviewer asks ("What quantity was traded?") -> the printed value
- checks: "Check as JSON: signature_present, date_format_valid, totals_match" -> {"signature_present": true, ...}
- read:   a curriculum for reading: the page with everything but one field's value blanked out -> that value
fields and checks answers are JSON so that one scorer (nanovlm.evaluate.fields) reads both.
"""
from __future__ import annotations

import json
import random

import numpy as np
from PIL import Image

from .kinds import Document

STYLES = ("fields", "qa", "checks", "read")
FIELDS_PROMPT = "Extract as JSON: "
CHECKS_PROMPT = "Check as JSON: "
READ_PROMPT = "Read the text."
READ_PER_DOCUMENT = 2

QUESTIONS = {
    "name": ("What is the applicant's name?", "Whose form is this?"),
    "date_of_birth": ("What is the date of birth?", "When was the applicant born?"),
    "pan": ("What is the PAN?", "What is the tax ID?"),
    "phone": ("What is the phone number?", "What mobile number is given?"),
    "address": ("What is the address?", "Where does the applicant live?"),
    "account_number": ("What is the account number?",),
    "trade_ref": ("What is the trade reference?", "What is the contract number?"),
    "security": ("Which security was traded?", "What was bought or sold?"),
    "isin": ("What is the ISIN?",),
    "side": ("Was it a buy or a sell?",),
    "quantity": ("What quantity was traded?", "How many units were traded?"),
    "price": ("At what price was the trade done?", "What was the price per unit?"),
    "amount": ("What is the total amount?", "What is the net amount?"),
    "trade_date": ("On what date was the trade?", "What is the trade date?"),
    "trade_time": ("At what time was the trade done?",),
    "account_holder": ("Who is the account holder?", "Whose statement is this?"),
    "statement_date": ("What is the statement date?",),
    "opening_balance": ("What was the opening balance?",),
    "closing_balance": ("What is the closing balance?", "How much is left in the account?"),
}
QA_PER_DOCUMENT = 3


def fields_prompt(keys) -> str:
    return FIELDS_PROMPT + ", ".join(keys)


def answer_json(values: dict) -> str:
    return json.dumps(values, ensure_ascii=False)


def fields_turn(doc: Document, rng: random.Random) -> tuple[dict, dict]:
    """Half the time every field in page order, else a random subset in random order (so any --fields request
    is in distribution). Returns the turn and its ground truth."""
    keys = [e.key for e in doc.entries]
    if rng.random() >= 0.5:
        keys = rng.sample(keys, rng.randint(1, len(keys)))
    values = {k: doc.values[k] for k in keys}
    return {"user": fields_prompt(keys), "assistant": answer_json(values)}, values


def checks_turn(doc: Document) -> tuple[dict, dict]:
    return {"user": CHECKS_PROMPT + ", ".join(doc.checks), "assistant": answer_json(doc.checks)}, dict(doc.checks)


def qa_turns(doc: Document, rng: random.Random) -> tuple[list[dict], list[dict]]:
    keys = rng.sample([e.key for e in doc.entries], min(QA_PER_DOCUMENT, len(doc.entries)))
    turns = [{"user": rng.choice(QUESTIONS[k]), "assistant": doc.values[k]} for k in keys]
    return turns, [{"key": k, "answer": doc.values[k]} for k in keys]


def texts_for(doc: Document, style: str, rng: random.Random) -> tuple[list[dict], dict]:
    """The record's turns in `style` and what goes into meta to score them."""
    if style == "fields":
        turn, truth = fields_turn(doc, rng)
        return [turn], {"answer": truth}
    if style == "checks":
        turn, truth = checks_turn(doc)
        return [turn], {"answer": truth}
    if style == "read":
        raise ValueError("the read style makes its own images: use masked_pages()")
    turns, questions = qa_turns(doc, rng)
    return turns, {"questions": questions}


def masked_pages(doc: Document, page: Image.Image, boxes: dict, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """The `read` curriculum: for a few fields, the scanned page with everything outside the field's value box
    painted over in the paper's colour. Same scale and place as on the full page, so what the vision encoder
    learns here (the shapes of characters) is what it needs there; one text on the page, so the decoder only has
    to copy it."""
    paper = tuple(int(c) for c in np.median(np.asarray(page).reshape(-1, 3), axis=0))
    out = []
    for key in rng.sample(sorted(boxes), min(READ_PER_DOCUMENT, len(boxes))):
        x0, y0, x1, y1 = boxes[key]
        region = (max(0, x0 - 2), max(0, y0 - 2), min(page.width, x1 + 2), min(page.height, y1 + 2))
        masked = Image.new("RGB", page.size, paper)
        masked.paste(page.crop(region), region[:2])
        out.append((key, masked))
    return out
