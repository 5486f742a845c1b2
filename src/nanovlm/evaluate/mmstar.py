"""MMStar, scored as lmms-eval does: `nanovlm eval mmstar --data DIR` (make DIR with `nanovlm data mmstar`).

- Prompt: the question with its options inline, then the post-prompt POST_PROMPT; greedy, a few new tokens.
- Reading the answer: a letter A-D given as "B", "(B)", "B.", "B) ...", "option B", "Answer: B", "The answer is B"
  (also later in a sentence: "I think the answer is (C)."). The article in "A dog sits on the sofa." is never read
  as the letter A; an answer with no letter counts as wrong.
- Accuracy per `category`, per `l2_category`, and overall = the mean of the l2_category accuracies (each
  sub-skill weighs the same, however many questions it has).
"""
from __future__ import annotations

import re

from .runner import Item, Scorer, register_scorer

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"
# at the very start: "B", "(B)", "B.", "B)", "B:", "B," or the whole answer; B-D may also start a sentence ("C is
# right"), A may not: "A dog ..." is an article
_LEADING = re.compile(r"^\(?([A-D])\)?(?=[.:,;)]|\s*$)|^([B-D])(?=\s)")
# anywhere: "option B", "Answer: (C)", "the answer is D" - the letter itself must be a capital
_STATED = re.compile(r"\b(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*\(?([A-D])\)?(?![A-Za-z])")


def extract_letter(text: str) -> str | None:
    """The option letter an answer gives, or None."""
    text = text.strip()
    if len(text) == 1 and text.upper() in "ABCD":
        return text.upper()
    if m := _LEADING.match(text):
        return m.group(1) or m.group(2)
    if m := _STATED.search(text):
        return m.group(1)
    return None


def _mean(values):
    return sum(values) / len(values) if values else None


def _by(scores, items, key):
    groups = {}
    for score, item in zip(scores, items):
        groups.setdefault(item.meta.get(key) or "(none)", []).append(score["correct"])
    return {name: {"n": len(v), "accuracy": _mean(v)} for name, v in sorted(groups.items())}


@register_scorer
class MMStarScorer(Scorer):
    name = "mmstar"
    description = ("MMStar multiple choice, lmms-eval protocol: letter extraction, accuracy per category and "
                   "l2_category, overall = mean over l2_category")
    max_new_tokens = 16
    headline = "overall"

    def items(self, record: dict) -> list[Item]:
        meta = record.get("meta", {})
        answer = meta.get("answer") or record["texts"][0]["assistant"].strip()
        if answer not in ("A", "B", "C", "D"):
            return []
        return [Item(id=record["id"], images=record["images"], question=record["texts"][0]["user"].strip() +
                     POST_PROMPT, reference=answer,
                     meta={"category": meta.get("category"), "l2_category": meta.get("l2_category")})]

    def score(self, answer: str, item: Item) -> dict:
        letter = extract_letter(answer)
        return {"letter": letter, "correct": letter == item.reference}

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        by_l2 = _by(scores, items, "l2_category")
        return {"questions": len(scores),
                "overall": _mean([g["accuracy"] for g in by_l2.values()]),
                "micro_accuracy": _mean([s["correct"] for s in scores]),
                "no_letter": _mean([s["letter"] is None for s in scores]),
                "by_category": _by(scores, items, "category"),
                "by_l2_category": by_l2}

    def no_items_hint(self) -> str:
        return "Make the data with `nanovlm data mmstar --parquet FILE --out DIR`"
