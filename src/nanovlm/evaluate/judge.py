"""An LLM grades the model's completions (the TinyStories protocol, as the NanoVLMs paper's Table 3).

    nanovlm eval judge --model runs/paper/mini/best --model runs/paper/large/best --data data/scenes \
        --judge-model gpt-4o

The model completes each held-out description from its first 6-7 (short) or 18-20 (long) words; the judge sees
the beginning and the completion split by ***, writes a free assessment first and then grades 0-10 on grammar,
creativity, consistency, meaningfulness and plot, as one JSON object (prompt: nanovlm/prompts/judge-v1.txt). The
answer is validated against a schema; a malformed one gets one repair request saying what was wrong, and a
sample whose repair fails too is reported as ungraded. Table 3 is the mean per criterion and their sum (/50).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .. import prompts
from ..chat import AnswerCache, ChatError, ChatSettings, RetriesExhausted, Usage, chat, make_client
from .rouge import heldout_items, heldout_new_tokens
from .runner import Scorer, register_scorer

CRITERIA = ("grammar", "creativity", "consistency", "meaningfulness", "plot")
RUBRIC_VERSION = "v1"
SEPARATOR = "***"


class GradeFormatError(ValueError):
    """The judge's answer is not the JSON object the rubric asks for."""


def _grades_model():
    # pydantic comes with the `openai` extra; built on first use so importing this module needs neither
    from pydantic import ConfigDict, Field, StrictInt, constr, create_model

    fields = {name: (StrictInt, Field(ge=0, le=10)) for name in CRITERIA}
    return create_model("Grades", __config__=ConfigDict(extra="ignore"),
                        assessment=(constr(strip_whitespace=True, min_length=1), ...), **fields)


_GRADES = None


def parse_grades(text: str) -> dict:
    """{"assessment": str, "grammar": int, ...} from the judge's answer, or GradeFormatError saying what is wrong.

    Tolerates what chat models wrap around JSON (a ```json fence, a sentence before it); nothing else: grades
    must be whole numbers 0-10 and every criterion must be there."""
    global _GRADES
    from pydantic import ValidationError

    _GRADES = _GRADES or _grades_model()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise GradeFormatError("the answer holds no JSON object")
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError as e:
        raise GradeFormatError(f"the JSON is not valid ({e.msg} at character {e.pos})") from None
    try:
        grades = _GRADES.model_validate(obj)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'object'}: {err['msg']}" for err in e.errors())
        raise GradeFormatError(f"the JSON does not match the schema ({problems})") from None
    return grades.model_dump()


ASSESSMENT_MAX_CHARS = 600


def grades_response_format() -> dict:
    """The grades' JSON schema as an OpenAI `response_format`: OpenAI (structured outputs), vLLM (guided decoding),
    llama.cpp's server (grammar) and `nanovlm serve` then only produce matching JSON. The assessment is bounded by a
    pattern (OpenAI takes `pattern`, not `maxLength`): a small judge that repeats itself must still close the string
    and give its grades. The 0-10 range is checked again by parse_grades, as not every server enforces bounds."""
    properties = {"assessment": {"type": "string", "pattern": f"^[^\\n]{{1,{ASSESSMENT_MAX_CHARS}}}$"},
                  **{c: {"type": "integer", "minimum": 0, "maximum": 10} for c in CRITERIA}}
    return {"type": "json_schema", "json_schema": {"name": "grades", "strict": True, "schema": {
        "type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}}}


def judge_messages(prompt: str, completion: str) -> list[dict]:
    text = prompts.load("judge", RUBRIC_VERSION).format(prompt=prompt.rstrip(), completion=" " + completion.strip())
    return [{"role": "user", "content": text}]


def grade_one(client, settings: ChatSettings, prompt: str, completion: str, usage: Usage) -> dict:
    """Grade one completion: {"assessment", <criteria>, "total", "repaired"}, or {"error", "raw"} when the judge's
    answer stays malformed after one repair request. Transport errors are retried inside chat()."""
    messages = judge_messages(prompt, completion)
    answer = chat(client, settings, messages, usage)
    repaired = False
    try:
        grades = parse_grades(answer)
    except GradeFormatError as e:
        repair = prompts.load("judge-repair", RUBRIC_VERSION).format(problem=str(e))
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": repair}]
        answer, repaired = chat(client, settings, messages, usage), True
        try:
            grades = parse_grades(answer)
        except GradeFormatError as e:
            return {"error": f"malformed after one repair: {e}", "raw": answer}
    return {**grades, "total": sum(grades[c] for c in CRITERIA), "repaired": repaired}


def grade_key(prompt: str, completion: str, model: str) -> str:
    identity = {"prompt": prompt, "completion": completion, "judge": model, "rubric": f"judge-{RUBRIC_VERSION}"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def grade_all(pairs: list[tuple[str, str]], settings: ChatSettings, client=None, cache: str | None = None,
              progress: bool = True) -> tuple[list[dict], Usage]:
    """Grade (prompt, completion) pairs, `settings.concurrency` at a time; results in input order. With `cache`
    (a file), grades already paid for are reused (keyed by prompt, completion, judge model and rubric)."""
    client = client or make_client(settings)
    store = AnswerCache(cache) if cache else None
    usage, refused = Usage(), threading.Event()
    bar = tqdm(total=len(pairs), desc=f"judge ({settings.model})", unit="sample", disable=not progress)
    lock = threading.Lock()

    def work(pair):
        key = grade_key(*pair, settings.model)
        result = store.get(key) if store is not None else None
        if result is None and not refused.is_set():
            try:
                result = grade_one(client, settings, *pair, usage)
            except RetriesExhausted as e:
                result = {"error": str(e)}
            except ChatError:
                refused.set()   # a wrong key or model: stop sending
                raise
            if store is not None and "error" not in result:
                store.put(key, result)
        with lock:
            bar.update(1)
            cost = usage.cost(settings.prices())
            bar.set_postfix_str(f"tokens {usage.prompt_tokens:,}+{usage.completion_tokens:,}"
                                + (f", ${cost:.4f}" if cost is not None else ""), refresh=False)
        return result

    try:
        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            results = list(pool.map(work, pairs))
    finally:
        bar.close()
        if store is not None:
            store.close()
    return results, usage


# -----------------------------------------------------------------------------
# Table 3

def table3_row(grades: list[dict]) -> dict:
    """Mean per criterion over the graded samples, and the total out of 50."""
    graded = [g for g in grades if "error" not in g]
    row = {c: (sum(g[c] for g in graded) / len(graded) if graded else None) for c in CRITERIA}
    row["total"] = sum(row[c] for c in CRITERIA) if graded else None
    row["graded"], row["failed"] = len(graded), len(grades) - len(graded)
    return row


def table3_markdown(rows: dict[str, dict]) -> str:
    """Several models side by side, as the paper's Table 3."""
    header = "| model | " + " | ".join(CRITERIA) + " | total (/50) | graded | failed |"
    lines = [header, "|---|" + "---:|" * (len(CRITERIA) + 3)]
    for name, row in rows.items():
        cells = ["n/a" if row[c] is None else f"{row[c]:.2f}" for c in (*CRITERIA, "total")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['graded']} | {row['failed']} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# the scorer the evaluation runner uses

@register_scorer
class LLMJudge(Scorer):
    """score() keeps each completion; summarize() grades them all at once, `concurrency` requests in flight
    (grading one by one inside the runner's loop would leave the endpoint idle), and writes each sample's grades
    into its score so that they land in the per-sample JSONL."""
    name = "judge"
    description = "an LLM grades each completed description 0-10 on grammar, creativity, consistency, " \
                  "meaningfulness and plot (Table 3)"

    def __init__(self, settings: ChatSettings | None = None, client=None, cache: str | None = None,
                 progress: bool = True):
        self.settings = settings or ChatSettings()
        self.client, self.cache, self.progress = client, cache, progress
        self.usage = Usage()

    def items(self, record):
        return heldout_items(record)

    def new_tokens(self, items, tokenizer):
        return heldout_new_tokens(items, tokenizer)

    def score(self, answer, item):
        return {"prompt": item.answer_start, "completion": answer[len(item.answer_start):].strip()}

    def summarize(self, scores, items):
        results, self.usage = grade_all([(s["prompt"], s["completion"]) for s in scores], self.settings,
                                        self.client, self.cache, self.progress)
        for score, result in zip(scores, results):
            score.update(result)
        return {**table3_row(results), "judge": self.settings.model, "rubric": f"judge-{RUBRIC_VERSION}",
                **{f"judge_{k}": v for k, v in self.usage.to_dict(self.settings.prices()).items()}}

    def format_value(self, key, value):
        if key in CRITERIA + ("total",) and isinstance(value, float):
            return f"{value:.2f}"
        if key == "judge_cost_usd" and isinstance(value, float):
            return f"${value:.4f}"
        return super().format_value(key, value)


@dataclass
class JudgeRun:
    """What `nanovlm eval judge` needs besides the models: the data and the judge endpoint."""
    data: str = "data/scenes"
    split: str = "test"
    limit: int | None = None
    batch_size: int = 32
    max_new_tokens: int | None = None     # None: room for the longest held-out rest, plus slack
    judge: ChatSettings = field(default_factory=ChatSettings)
    cache: str | None = None


def judge_models(models: dict[str, object], run: JudgeRun, client=None, progress: bool = True) -> dict:
    """Evaluate several models with the judge; return {"rows": {name: Table 3 row}, "results": {name: runner
    result}, "table": Markdown}. The same held-out prompts go to every model."""
    from .runner import evaluate

    results, rows = {}, {}
    client = client or make_client(run.judge)   # one client for all models (building one takes a second)
    for name, model in models.items():
        scorer = LLMJudge(run.judge, client=client, cache=run.cache, progress=progress)
        results[name] = evaluate(model, run.data, scorer, split=run.split, limit=run.limit,
                                 batch_size=run.batch_size, max_new_tokens=run.max_new_tokens, progress=progress)
        rows[name] = {k: results[name]["summary"][k] for k in (*CRITERIA, "total", "graded", "failed")}
    return {"rows": rows, "results": results, "table": table3_markdown(rows)}


def model_label(path: str) -> str:
    """A short column name for a model folder: runs/paper/large/best -> large/best."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p]
    return "/".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else str(path))
