"""Novelty: ROUGE-1 F1 of each generated description against its closest training description (the paper's
Figure 8: mostly below 0.5 means the model writes new descriptions rather than copying the ones it learned).

    nanovlm eval rouge --model runs/paper/large/best --data data/scenes

Exact, and fast over tens of thousands of training descriptions: ROUGE-1 F1 is 2 * overlap / (|c| + |r|) with
overlap = sum over words of min(count in c, count in r). We keep an inverted index (for every word, the training
descriptions holding it and how often) and add min(counts) into one overlap vector per candidate, touching only
the candidate's own words: no approximation and no top-k prefilter. Tokens come from rouge-score's own tokenizer,
so every value equals `rouge_score.rouge_scorer.RougeScorer(["rouge1"]).score(reference, candidate).fmeasure`.
"""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..data.describe import heldout_prompt
from .runner import Item, Scorer, register_scorer

NOVELTY_THRESHOLD = 0.5   # the paper's line: below it a description is not a near-copy


class NearestRouge1:
    """The training descriptions, indexed so that best_match(candidate) is one pass over the candidate's words."""

    def __init__(self, references: list[str], use_stemmer: bool = False):
        if not references:
            raise ConfigError("ROUGE novelty needs at least one training description")
        from rouge_score.tokenizers import DefaultTokenizer   # optional extra (nanovlm[paper])

        self.references = references
        self.tokenizer = DefaultTokenizer(use_stemmer=use_stemmer)
        vocabulary: dict[str, int] = {}
        words, docs, counts = [], [], []
        self.lengths = np.zeros(len(references), dtype=np.int64)
        for doc, text in enumerate(references):
            tokens = self.tokenizer.tokenize(text)
            self.lengths[doc] = len(tokens)
            for word, count in Counter(tokens).items():
                words.append(vocabulary.setdefault(word, len(vocabulary)))
                docs.append(doc)
                counts.append(count)
        # postings sorted by word: the documents of word w are docs[start[w]:start[w + 1]]
        order = np.argsort(np.asarray(words, dtype=np.int64), kind="stable")
        self.docs = np.asarray(docs, dtype=np.int64)[order]
        self.counts = np.asarray(counts, dtype=np.int64)[order]
        self.start = np.searchsorted(np.asarray(words, dtype=np.int64)[order], np.arange(len(vocabulary) + 1))
        self.vocabulary = vocabulary

    def scores(self, candidate: str) -> np.ndarray:
        """ROUGE-1 F1 of `candidate` against every reference (as rouge-score computes it: 0 when either is empty)."""
        tokens = self.tokenizer.tokenize(candidate)
        overlap = np.zeros(len(self.references), dtype=np.int64)
        for word, count in Counter(tokens).items():
            w = self.vocabulary.get(word)
            if w is not None:
                span = slice(self.start[w], self.start[w + 1])
                overlap[self.docs[span]] += np.minimum(self.counts[span], count)
        total = len(tokens) + self.lengths
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where((overlap > 0), 2.0 * overlap / total, 0.0)
        return f1

    def best_match(self, candidate: str) -> tuple[float, int]:
        """(highest ROUGE-1 F1, index of that training description)."""
        f1 = self.scores(candidate)
        best = int(np.argmax(f1))
        return float(f1[best]), best


def novelty_summary(values: list[float]) -> dict:
    if not values:
        return {"samples": 0, "rouge1_mean": None, "rouge1_median": None, "share_above_0_5": None}
    return {"samples": len(values), "rouge1_mean": statistics.fmean(values), "rouge1_median": statistics.median(values),
            "share_above_0_5": sum(v > NOVELTY_THRESHOLD for v in values) / len(values)}


def plot_histogram(values: list[float], path: str | Path, title: str = "") -> Path:
    """Figure 8: the distribution of each description's ROUGE-1 F1 against its closest training description."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(values, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(NOVELTY_THRESHOLD, color="tab:red", linestyle="--", linewidth=1, label="0.5")
    ax.set_xlabel("ROUGE-1 F1 with the closest training description")
    ax.set_ylabel("generated descriptions")
    ax.set_xlim(0, 1)
    ax.set_title(title or f"{len(values)} descriptions, {100 * novelty_summary(values)['share_above_0_5']:.1f}% "
                          "above 0.5")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def description_style(record: dict) -> str:
    """short or long: what the record says (scenes' meta.style, describe's meta.describe.style), else its length."""
    meta = record.get("meta", {})
    style = meta.get("style") or (meta.get("describe") or {}).get("style")
    if style in ("short", "long"):
        return style
    return "long" if len(record["texts"][0]["assistant"].split()) >= 40 else "short"


def heldout_items(record: dict, seed: int = 0) -> list[Item]:
    """The paper's held-out task for one description record: the first 6-7 (short) or 18-20 (long) words."""
    turn = record["texts"][0]
    style = description_style(record)
    return [Item(id=record["id"], images=record["images"], question=turn["user"],
                 answer_start=heldout_prompt(turn["assistant"], style, record["id"], seed),
                 reference=turn["assistant"], meta={"style": style})]


def heldout_new_tokens(items: list[Item], tokenizer) -> int:
    """Room for the longest rest of a reference after its prompt, plus slack."""
    longest = max(len(tokenizer.encode(item.reference)) - len(tokenizer.encode(item.answer_start)) for item in items)
    return int(max(longest, 1) * 1.3) + 8


@register_scorer
class RougeNovelty(Scorer):
    name = "rouge"
    description = "ROUGE-1 F1 of each completed description against its closest training description (novelty)"

    def __init__(self, references: list[str] | None = None, use_stemmer: bool = False):
        self.index = NearestRouge1(references, use_stemmer) if references is not None else None

    @classmethod
    def from_training_data(cls, folder, use_stemmer: bool = False) -> "RougeNovelty":
        from ..data.format import read_records

        texts = [turn["assistant"] for r in read_records(folder, split="train", check_images=False)
                 for turn in r["texts"]]
        return cls(texts, use_stemmer)

    def items(self, record):
        return heldout_items(record)

    def new_tokens(self, items, tokenizer):
        return heldout_new_tokens(items, tokenizer)

    def score(self, answer, item):
        if self.index is None:
            raise ConfigError("the rouge task compares with the training descriptions: build it with "
                              "RougeNovelty.from_training_data(folder) (the `nanovlm eval rouge` command does)")
        f1, best = self.index.best_match(answer)
        return {"rouge1": f1, "closest_train": self.index.references[best]}

    def summarize(self, scores, items):
        summary = novelty_summary([s["rouge1"] for s in scores])
        by_style = {}
        for style in ("short", "long"):
            values = [s["rouge1"] for s, item in zip(scores, items) if item.meta.get("style") == style]
            if values:
                by_style[style] = novelty_summary(values)
        if len(by_style) > 1:
            summary["by_style"] = by_style
        return summary

    def format_value(self, key, value):
        if key.startswith("rouge1") and isinstance(value, float):
            return f"{value:.3f}"
        return super().format_value(key, value)
