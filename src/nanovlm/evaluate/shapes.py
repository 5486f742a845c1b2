"""`nanovlm eval shapes`: the shapes diagnostic (nanovlm.data.shapes) scored per attribute.

The answers are scored like VQA (normalised exact match, evaluate/vqa.py); the summary adds accuracy per attribute
(shape, color, count, relation) and, for each attribute, on objects whose colour-shape combination training
showed vs combinations held out of training (`meta.questions[k].heldout_combo`, test split only).
"""
from __future__ import annotations

from .runner import Item, register_scorer
from .vqa import VQAScorer, _accuracy_table


@register_scorer
class ShapesScorer(VQAScorer):
    name = "shapes"
    description = ("the shapes diagnostic: normalised exact match per attribute (shape, color, count, relation), "
                   "on seen and on held-out colour-shape combinations")

    def items(self, record: dict) -> list[Item]:
        return [i for i in super().items(record) if "type" in i.meta]

    def no_items_hint(self) -> str:
        return "Make the data with `nanovlm data shapes --out DIR`."

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        summary = {"questions": len(scores), "accuracy": sum(s["accuracy"] for s in scores) / len(scores)}
        types = [i.meta.get("type") for i in items]
        for attribute, row in _accuracy_table(scores, types).items():
            summary[f"{attribute}_accuracy"] = row["accuracy"]
        summary["by_attribute"] = _accuracy_table(scores, types)
        combos = ["held-out combination" if i.meta.get("heldout_combo") else "seen combination" for i in items]
        summary["by_combination"] = _accuracy_table(scores, combos)
        summary["by_attribute_and_combination"] = _accuracy_table(
            scores, [f"{t} / {'held out' if i.meta.get('heldout_combo') else 'seen'}" for t, i in zip(types, items)])
        return summary
