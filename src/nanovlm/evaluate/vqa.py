"""Visual question answering scored by normalised exact match, the VQA convention: `nanovlm eval vqa`.

Both the model's answer and the reference are lower-cased, stripped of punctuation and of the articles a/an/the,
and number words become digits ("Two." == "2", "the ball" == "ball"). With a list of references (VQAv2's ten
human answers) an answer scores min(#references that match / 3, 1), the VQA accuracy; with one it is 0 or 1.

Every turn of a record is one question (asked with the record's images, on its own). Its type comes from
`meta.questions[k].type` (scenes VQA: color, count, ...) or `meta.question_type` (one type for the record), and
`meta.questions[k].heldout_template` marks question wordings never seen in training: the summary reports
accuracy per type and for seen vs held-out wordings.
"""
from __future__ import annotations

import re

from .runner import Item, Scorer, register_scorer

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}
ARTICLES = {"a", "an", "the"}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")          # "2,000" -> "2000"
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")             # a full stop, not a decimal point
_PUNCTUATION = re.compile(r"[;:!?'\"/\\,\-_()\[\]{}<>@#$%^&*+=`~|]")


def normalize_answer(text: str) -> str:
    """The VQA answer normalisation: case, punctuation, articles, number words."""
    text = text.strip().lower()
    text = _DIGIT_COMMA.sub("", text)
    text = _PERIOD.sub(" ", text)
    text = _PUNCTUATION.sub(lambda m: "" if m.group(0) == "'" else " ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def first_line(answer: str) -> str:
    return answer.strip().split("\n", 1)[0]


def vqa_accuracy(answer: str, references: str | list[str]) -> float:
    """1/0 for one reference; min(matches / 3, 1) against a list of human answers."""
    said = normalize_answer(first_line(answer))
    if isinstance(references, str):
        return float(said == normalize_answer(references))
    matches = sum(said == normalize_answer(r) for r in references)
    return min(matches / 3, 1.0)


def _question_info(record: dict, turn: int) -> dict:
    meta = record.get("meta", {})
    questions = meta.get("questions")
    info = dict(questions[turn]) if isinstance(questions, list) and turn < len(questions) and \
        isinstance(questions[turn], dict) else {}
    if "type" not in info and isinstance(meta.get("question_type"), str):
        info["type"] = meta["question_type"]
    return info


def _accuracy_table(scores: list[dict], keys: list) -> dict:
    groups = {}
    for score, key in zip(scores, keys):
        if key is not None:
            groups.setdefault(key, []).append(score["accuracy"])
    return {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(groups.items())}


@register_scorer
class VQAScorer(Scorer):
    name = "vqa"
    description = ("answer every question of the held-out records; normalised exact match (case, punctuation, "
                   "articles, number words), per question type")

    def items(self, record: dict) -> list[Item]:
        items = []
        for k, turn in enumerate(record["texts"]):
            info = _question_info(record, k)
            references = info.get("answers", turn["assistant"])   # a list of human answers when the source has one
            items.append(Item(id=f"{record['id']}#{k}", images=record["images"], question=turn["user"],
                              reference=references, meta=info))
        return items

    def new_tokens(self, items: list[Item], tokenizer) -> int:
        # short answers: room for the longest reference and a little more, so a wrong long answer still ends
        longest = max(len(tokenizer.encode(r)) for i in items
                      for r in ([i.reference] if isinstance(i.reference, str) else i.reference))
        return min(64, longest + 4)

    def score(self, answer: str, item: Item) -> dict:
        return {"accuracy": vqa_accuracy(answer, item.reference)}

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        summary = {"questions": len(scores), "accuracy": sum(s["accuracy"] for s in scores) / len(scores)}
        by_type = _accuracy_table(scores, [i.meta.get("type") for i in items])
        if by_type:
            summary["by_type"] = by_type
        wording = [None if "heldout_template" not in i.meta else
                   ("held-out wording" if i.meta["heldout_template"] else "seen wording") for i in items]
        by_wording = _accuracy_table(scores, wording)
        if by_wording:
            summary["by_wording"] = by_wording
        return summary
