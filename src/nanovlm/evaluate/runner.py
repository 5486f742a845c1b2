"""One evaluation runner for every task: records -> questions -> `complete` (batched) -> a scorer -> report.

    from nanovlm.evaluate import evaluate, write_report
    result = evaluate(model, "data/scenes_vqa", task="vqa", split="test", limit=500)
    print(result["table"])                     # Markdown
    write_report(result, "runs/demo/vqa_test.json")   # .json summary, .jsonl per sample, .md table

Adding a task = one module in nanovlm/evaluate/ holding one registered Scorer subclass:

    from .runner import Item, Scorer, register_scorer

    @register_scorer
    class Exact(Scorer):
        name = "exact"                                   # `nanovlm eval exact`
        description = "answer equals the reference"      # shown in --help
        max_new_tokens = 8

        def items(self, record):                         # the questions one record asks (may be none)
            turn = record["texts"][0]
            return [Item(id=record["id"], images=record["images"], question=turn["user"],
                         reference=turn["assistant"])]

        def score(self, answer, item):                   # one answer (answer_start + completion) -> a dict
            return {"correct": answer.strip() == item.reference}

        def summarize(self, scores, items):              # all scores -> {metric: number or {group: {...}}}
            return {"questions": len(scores), "accuracy": sum(s["correct"] for s in scores) / len(scores)}

The module is found by name (`get_scorer("exact")` imports nanovlm.evaluate.exact), so nothing else needs an edit:
`nanovlm eval exact --model M --data D` works (with --limit, --batch-size, --json, --report). A task that needs
settings declares them in `options` ({"judge_url": {"help": "...", "default": None, "type": str}}): each becomes a
`--judge-url` flag and `self.judge_url`. Override `new_tokens(items, tokenizer)` when the budget depends on the
references, `format_value` for a number that is not a rate, `no_items_hint` for the empty-dataset error; set
`headline` to the summary key that is the task's one number (training's `select_by=TASK` keeps `best` by it).
Summaries hold numbers (rates in [0, 1] are shown as percentages unless `format_value` says otherwise) and may
hold one level of groups, {"by_type": {"color": {"n": 10, "accuracy": 0.9}, ...}}, shown as a second table.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import format as fmt
from ..progress import progress as show_progress


@dataclass
class Item:
    """One question put to the model: the images (paths relative to the dataset folder), the user turn, the first
    words of the answer the model continues from, and whatever the scorer compares the answer with."""
    id: str
    images: list[str]
    question: str
    answer_start: str = ""
    reference: Any = None
    meta: dict = field(default_factory=dict)       # scorer-specific: question type, category, ground truth ...


class Scorer:
    """How one task asks its questions, scores one answer and sums up. Subclass it and decorate with
    @register_scorer; see the module docstring."""
    name: str = ""
    description: str = ""
    max_new_tokens: int = 16        # generation budget per question (greedy)
    headline: str = "accuracy"      # the summary's one number (training's select_by keeps the best by it)
    default_split: str = "test"
    # task-specific settings, each becomes `nanovlm eval NAME --flag` and an attribute of the scorer:
    # {"judge_url": {"help": "...", "default": None, "type": str}}
    options: dict[str, dict] = {}

    def __init__(self, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            raise ConfigError(f"the {self.name!r} task has no option(s) {sorted(unknown)}; "
                              f"it takes {sorted(self.options) or 'none'}")
        for key, spec in self.options.items():
            setattr(self, key, options.get(key, spec.get("default")))

    def items(self, record: dict) -> list[Item]:
        raise NotImplementedError

    def score(self, answer: str, item: Item) -> dict:
        raise NotImplementedError

    def summarize(self, scores: list[dict], items: list[Item]) -> dict:
        raise NotImplementedError

    def new_tokens(self, items: list[Item], tokenizer) -> int:
        """Tokens to generate for these questions; override when it depends on the references."""
        return self.max_new_tokens

    def no_items_hint(self) -> str:
        """Appended to the error when a dataset has nothing this scorer can ask."""
        return ""

    def attach(self, model, data):
        """Called once before scoring, for scorers that need more than the answer text (the fields scorer reads
        the model's token probabilities on the images in `data`)."""

    def format_value(self, key: str, value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, bool) or isinstance(value, int):
            return str(int(value))
        if isinstance(value, float) and 0.0 <= value <= 1.0:
            return f"{100 * value:.1f}%"
        return f"{value:.3g}" if isinstance(value, float) else str(value)


SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make `cls` available as `nanovlm eval <cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    SCORERS[cls.name] = cls
    return cls


def _scorer_modules() -> list[str]:
    package = Path(__file__).parent
    return [m.name for m in pkgutil.iter_modules([str(package)]) if m.name != "runner" and not m.name.startswith("_")]


def available_scorers() -> dict[str, type[Scorer]]:
    """Every scorer in nanovlm/evaluate/ (imports each module once), by name."""
    for module in _scorer_modules():
        importlib.import_module(f"{__package__}.{module}")
    return dict(sorted(SCORERS.items()))


def get_scorer(name: str, **options) -> Scorer:
    """A scorer by task name, configured with its task-specific options."""
    if name not in SCORERS and name in _scorer_modules():
        importlib.import_module(f"{__package__}.{name}")
    if name not in SCORERS:
        available_scorers()
    if name not in SCORERS:
        raise ConfigError(f"unknown evaluation task {name!r}; choose from {', '.join(available_scorers())}")
    return SCORERS[name](**options)


# -----------------------------------------------------------------------------
# running

def collect_items(scorer: Scorer, records: list[dict], limit: int | None = None) -> list[Item]:
    """The scorer's questions over the records, in order, at most `limit` of them."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1, got {limit!r}")
    items = []
    for record in records:
        items.extend(scorer.items(record))
        if limit is not None and len(items) >= limit:
            return items[:limit]
    return items


def join_answer(start: str, completion: str) -> str:
    """The answer as the model gave it: its start plus the continuation, one space between words."""
    if not start:
        return completion.strip()
    return start + ("" if not completion or completion[:1].isspace() else " ") + completion


def evaluate(model, data: str | os.PathLike, task: str | Scorer, split: str | None = None, limit: int | None = None,
             batch_size: int = 32, max_new_tokens: int | None = None, records: list[dict] | None = None,
             progress: bool = True) -> dict:
    """Ask `model` every question `task`'s scorer finds in the dataset folder's `split`; score and sum up.

    Returns {"task", "split", "summary", "samples": [{"id", "images", "question", "answer_start", "answer",
    "reference", "score"}], "table": Markdown}. `records` (already read, e.g. during training) skips reading the
    folder; images are still opened from it.
    """
    from ..predict import complete   # torch is imported only when a model is actually run

    scorer = get_scorer(task) if isinstance(task, str) else task
    scorer.attach(model, data)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    split = split or scorer.default_split
    if records is None:
        records = fmt.read_records(data, split=split)
    items = collect_items(scorer, records, limit)
    if not items:
        raise fmt.DatasetFormatError(f"{data}: no {split} records that the {scorer.name!r} task can score. "
                                     f"{scorer.no_items_hint()}".strip())
    tokenizer = model.tokenizer
    budget = max_new_tokens or scorer.new_tokens(items, tokenizer)
    samples, scores = [], []
    bar = show_progress(total=len(items), desc=scorer.name, unit="q", enabled=progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = [[fmt.load_image(data, path) for path in item.images] for item in chunk]
        completions = complete(model, images, answer_starts=[i.answer_start for i in chunk],
                               questions=[i.question for i in chunk], max_new_tokens=budget, batch_size=batch_size)
        for item, completion in zip(chunk, completions):
            answer = join_answer(item.answer_start, completion)
            score = scorer.score(answer, item)
            scores.append(score)
            samples.append({"id": item.id, "images": item.images, "question": item.question,
                            "answer_start": item.answer_start, "answer": answer, "reference": item.reference,
                            "meta": item.meta, "score": score})
        bar.update(len(chunk))
    bar.close()
    summary = scorer.summarize(scores, items)
    return {"task": scorer.name, "split": split, "data": str(data), "summary": summary, "samples": samples,
            "table": format_markdown(summary, scorer)}


# -----------------------------------------------------------------------------
# reporting

def format_markdown(summary: dict, scorer: Scorer | None = None) -> str:
    """The summary as Markdown: one `metric | value` table, then one table per group of sub-results."""
    scorer = scorer or Scorer()
    flat = [(k, v) for k, v in summary.items() if not isinstance(v, dict)]
    groups = [(k, v) for k, v in summary.items() if isinstance(v, dict) and v]
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {scorer.format_value(k, v)} |" for k, v in flat]
    for key, group in groups:
        columns = list(dict.fromkeys(c for row in group.values() if isinstance(row, dict) for c in row))
        lines += ["", f"| {key.replace('_', ' ')} | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, row in group.items():
            row = row if isinstance(row, dict) else {"value": row}
            lines.append(f"| {name} | " + " | ".join(scorer.format_value(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _atomic_text(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def report_paths(path: str | os.PathLike) -> dict[str, Path]:
    """REPORT.json (summary), REPORT.jsonl (one line per question) and REPORT.md (the tables)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".json", ".jsonl", ".md") else path
    return {"summary": base.with_suffix(".json"), "samples": base.with_suffix(".jsonl"),
            "table": base.with_suffix(".md")}


def write_report(result: dict, path: str | os.PathLike) -> dict[str, Path]:
    """Write the three report files next to each other (each atomically); return their paths."""
    paths = report_paths(path)
    head = {k: result[k] for k in ("task", "split", "data", "summary")}
    _atomic_text(paths["summary"], json.dumps(head, indent=1) + "\n")
    _atomic_text(paths["samples"], "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result["samples"]))
    _atomic_text(paths["table"], f"# {result['task']} on {result['data']} ({result['split']})\n\n{result['table']}\n")
    return paths
