"""Child-language descriptions by an LLM (the NanoVLMs paper's ShortDesc / LongDesc data).

    nanovlm data describe --data data/coco --out data/coco-short --style short --model gpt-4o

Every record's captions (COCO's five in meta.captions, else its assistant texts) go to an OpenAI-compatible
endpoint with a versioned prompt (nanovlm/prompts/describe-v1.txt); the answer becomes the record's description.
Each answer is checked (word count in the style's range, few words outside the most common English words) and,
when it fails, asked for again with the reason; a record that still fails is reported, never silently dropped.

Guarantees:
- every input record ends up exactly once, either in OUT/records.jsonl or in OUT/describe_failures.jsonl;
- every accepted answer is stored in an on-disk cache (keyed by image, captions, style, model and prompt version)
  the moment it arrives, so a killed run, rerun with the same command, pays only for what it had not got;
- OUT/records.jsonl is written once, atomically, at the end, and an existing one only with overwrite=True.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from tqdm.auto import tqdm

from .. import prompts
from ..chat import AnswerCache, ChatError, ChatSettings, RetriesExhausted, Usage, chat, make_client
from ..config import ConfigError
from .coco import _place_image
from .format import DESCRIBE_PROMPT, RECORDS_FILE, DatasetFormatError, read_records, write_records

WORD_RANGE = {"short": (20, 25), "long": (60, 70)}            # the paper's ShortDesc / LongDesc lengths
PROMPT_WORDS = {"short": (6, 7), "long": (18, 20)}            # held-out prompt: the first words the model is given
PROMPT_VERSION = "v1"
FAILURES_FILE = "describe_failures.jsonl"
SUMMARY_FILE = "describe_summary.json"
CACHE_FILE = ".describe-cache.sqlite"


@dataclass
class DescribeConfig:
    data: str = "data/coco"                 # input dataset folder (any records; COCO's keep all captions in meta)
    out: str = "data/coco-short"
    style: str = "short"                    # short (20-25 words) | long (60-70 words)
    words: tuple[int, int] | None = None    # another word range than the style's, e.g. (15, 40)
    chat: ChatSettings = field(default_factory=ChatSettings)
    split: str | None = None                # only this split; None = all records
    limit: int | None = None                # only the first N records (a trial run)
    quality_attempts: int = 3               # answers asked for per record before it is reported as failed
    common_words: int = 5000                # "simple" = among the most common N English words (wordfreq)
    max_rare_share: float = 0.15            # at most this share of a description's words outside them
    cache: str | None = None                # answer cache; None -> OUT/.describe-cache.sqlite
    # ask for {"description": ...} with the word range as a pattern (response_format json_schema): a server that
    # decodes under the schema (nanovlm serve, vLLM, llama.cpp, OpenAI) then cannot miss the range
    json_schema: bool = False
    image_mode: str = "copy"                # copy | symlink: how images reach OUT
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.style not in WORD_RANGE:
            raise ConfigError(f"style must be one of {', '.join(WORD_RANGE)}, got {self.style!r}")
        if self.image_mode not in ("copy", "symlink"):
            raise ConfigError(f'image_mode must be "copy" or "symlink", got {self.image_mode!r}')
        if self.quality_attempts < 1:
            raise ConfigError(f"quality_attempts must be >= 1, got {self.quality_attempts}")
        if self.words is not None and not (len(self.words) == 2 and 1 <= self.words[0] <= self.words[1]):
            raise ConfigError(f"words must be MIN,MAX with 1 <= MIN <= MAX, got {self.words}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (or left out for all records), got {self.limit}")
        if self.common_words < 100:
            raise ConfigError(f"common_words must be >= 100 (a child knows a few thousand words), got "
                              f"{self.common_words}")
        if not 0.0 <= self.max_rare_share <= 1.0:
            raise ConfigError(f"max_rare_share must be between 0 and 1, got {self.max_rare_share}")


# -----------------------------------------------------------------------------
# checking one description

@lru_cache(maxsize=4)
def _common_stems(n: int) -> frozenset[str]:
    import wordfreq
    from nltk.stem.porter import PorterStemmer

    # compare stems, so that "eats", "giraffes" and "spotted" count as the common "eat", "giraffe", "spot"
    stem = PorterStemmer().stem
    return frozenset(stem(word) for word in wordfreq.top_n_list("en", n))


def rare_words(text: str, common_words: int = 5000) -> tuple[list[str], int]:
    """(words of `text` outside the `common_words` most frequent English words, number of words)."""
    import wordfreq
    from nltk.stem.porter import PorterStemmer

    stem = PorterStemmer().stem
    words = [w for w in wordfreq.tokenize(text, "en") if any(c.isalpha() for c in w)]
    common = _common_stems(common_words)
    return [w for w in words if stem(w) not in common], len(words)


def word_range(style: str, words: tuple[int, int] | None = None) -> tuple[int, int]:
    return tuple(words) if words else WORD_RANGE[style]


def check_description(text: str, style: str, common_words: int = 5000, max_rare_share: float = 0.15,
                      words: tuple[int, int] | None = None) -> list[str]:
    """The reasons `text` is not an acceptable description of `style` ([] when it is), phrased for the LLM."""
    lo, hi = word_range(style, words)
    problems = []
    n_words = len(text.split())
    if not lo <= n_words <= hi:
        problems.append(f"it has {n_words} words but must have {lo} to {hi}")
    rare, n_tokens = rare_words(text, common_words)
    if n_tokens and len(rare) / n_tokens > max_rare_share:
        shown = ", ".join(dict.fromkeys(rare))
        problems.append(f"too many words a small child would not know ({shown}); use simpler words")
    return problems


def description_response_format(style: str, words: tuple[int, int] | None = None) -> dict:
    """The answer as {"description": "..."} of plain words (up to 15 letters, an apostrophe or hyphen inside,
    one mark of punctuation after), one space apart, as many as the style allows, as an OpenAI response_format.
    Plain, bounded words, not any run of non-spaces: a small model held to a word count otherwise glues words
    together ("They'rewalking,there'sa") once it has used them up."""
    lo, hi = word_range(style, words)
    word = r"[A-Za-z][A-Za-z'-]{0,14}[,.!?;:]?"
    pattern = rf"^{word}( {word}){{{lo - 1},{hi - 1}}}$"
    schema = {"type": "object", "properties": {"description": {"type": "string", "pattern": pattern}},
              "required": ["description"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "description", "strict": True, "schema": schema}}


def description_from_answer(answer: str) -> str:
    """The description in a JSON answer {"description": ...}; any other answer as it is (then checked as text)."""
    try:
        obj = json.loads(answer)
    except json.JSONDecodeError:
        return answer
    return obj["description"] if isinstance(obj, dict) and isinstance(obj.get("description"), str) else answer


def clean_answer(text: str) -> str:
    """The description in an LLM answer: one paragraph, without wrapping quotes or a "Description:" label."""
    text = " ".join(text.split())
    for label in ("Description:", "Here is the description:", "Short description:", "Long description:"):
        if text.lower().startswith(label.lower()):
            text = text[len(label):].strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# -----------------------------------------------------------------------------
# asking for one description

def source_captions(record: dict) -> list[str]:
    """What the LLM rewrites: COCO's captions (meta.captions), else the record's assistant texts."""
    captions = record.get("meta", {}).get("captions")
    if isinstance(captions, list) and captions and all(isinstance(c, str) for c in captions):
        return captions
    return [turn["assistant"] for turn in record["texts"]]


def cache_key(record: dict, style: str, model: str, version: str = PROMPT_VERSION,
              words: tuple[int, int] | None = None, json_schema: bool = False) -> str:
    """Everything that determines the answer: the image, its captions, the style, the model, the prompt."""
    identity = {"images": record["images"], "captions": source_captions(record), "style": style, "model": model,
                "prompt": f"describe-{version}"}
    if words:
        identity["words"] = list(words)
    if json_schema:
        identity["json_schema"] = True
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def first_messages(captions: list[str], style: str, words: tuple[int, int] | None = None) -> list[dict]:
    lo, hi = word_range(style, words)
    text = prompts.load("describe", PROMPT_VERSION).format(
        captions="\n".join(f"- {c}" for c in captions), min_words=lo, max_words=hi)
    return [{"role": "user", "content": text}]


def describe_one(client, settings: ChatSettings, captions: list[str], style: str, usage: Usage,
                 quality_attempts: int = 3, common_words: int = 5000, max_rare_share: float = 0.15,
                 words: tuple[int, int] | None = None) -> dict:
    """Ask until an answer passes the checks (each retry tells the LLM what was wrong).

    Returns {"ok", "description", "attempts", "rejected": [{"text", "problems"}...]}; raises the chat module's
    errors when the endpoint itself fails for good (after the transport retries)."""
    lo, hi = word_range(style, words)
    messages = first_messages(captions, style, words)
    rejected = []
    for attempt in range(1, quality_attempts + 1):
        text = clean_answer(description_from_answer(chat(client, settings, messages, usage)))
        problems = check_description(text, style, common_words, max_rare_share, words)
        if not problems:
            return {"ok": True, "description": text, "attempts": attempt, "rejected": rejected}
        rejected.append({"text": text, "problems": problems})
        retry = prompts.load("describe-retry", PROMPT_VERSION).format(
            problems="; ".join(problems), min_words=lo, max_words=hi)
        messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": retry}]
    return {"ok": False, "description": None, "attempts": quality_attempts, "rejected": rejected}


# -----------------------------------------------------------------------------
# a whole dataset

def describe_dataset(cfg: DescribeConfig, client=None) -> dict:
    """Describe every record of cfg.data into cfg.out; return a summary (counts, tokens, cost)."""
    data, out = Path(cfg.data), Path(cfg.out)
    if out.resolve() == data.resolve():
        raise ConfigError(f"--out {out} is the input folder; write the descriptions to a new folder")
    if (out / RECORDS_FILE).exists() and not cfg.overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another --out or pass --overwrite")
    records = read_records(data, split=cfg.split)
    records = records[: cfg.limit] if cfg.limit else records
    if not records:
        raise DatasetFormatError(f"{data}: no records{f' in split {cfg.split}' if cfg.split else ''} to describe")

    settings = replace(cfg.chat, response_format=description_response_format(cfg.style, cfg.words)) \
        if cfg.json_schema else cfg.chat
    client = client or make_client(settings)
    cache = AnswerCache(cfg.cache or out / CACHE_FILE)
    usage, prices = Usage(), cfg.chat.prices()
    keys = [cache_key(r, cfg.style, cfg.chat.model, words=cfg.words, json_schema=cfg.json_schema) for r in records]
    results = {i: cache.get(key) for i, key in enumerate(keys)}
    todo = [i for i, result in results.items() if result is None]
    from_cache = len(records) - len(todo)

    refused = threading.Event()   # set by the first refused request: the queued ones are not sent

    def work(i: int) -> dict | None:
        if refused.is_set():
            return None
        try:
            result = describe_one(client, settings, source_captions(records[i]), cfg.style, usage,
                                  cfg.quality_attempts, cfg.common_words, cfg.max_rare_share, cfg.words)
        except RetriesExhausted as e:   # this record is reported; a refused request (ChatError) stops the run
            return {"ok": False, "description": None, "error": str(e), "rejected": []}
        except ChatError:
            refused.set()
            raise
        if result["ok"]:
            cache.put(keys[i], result)   # stored before anything else: a kill after this point loses nothing
        return result

    bar = tqdm(total=len(records), initial=from_cache, desc=f"describe ({cfg.style}, {cfg.chat.model})",
               unit="rec", disable=not cfg.progress)
    pool = ThreadPoolExecutor(max_workers=cfg.chat.concurrency)
    try:
        futures = {pool.submit(work, i): i for i in todo}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
            bar.set_postfix_str(_progress_note(usage, prices), refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # Ctrl-C: finish what is in flight (it gets cached)
        bar.close()
        cache.close()
    return _write_outputs(cfg, records, results, usage, prices, from_cache)


def _progress_note(usage: Usage, prices) -> str:
    cost = usage.cost(prices)
    return (f"tokens in {usage.prompt_tokens:,} out {usage.completion_tokens:,}, retries {usage.retries}"
            + (f", ${cost:.4f}" if cost is not None else ""))


def _write_outputs(cfg: DescribeConfig, records: list[dict], results: dict, usage: Usage, prices,
                   from_cache: int) -> dict:
    out, data = Path(cfg.out), Path(cfg.data)
    described, failures = [], []
    for i, record in enumerate(records):
        result = results[i]
        if result and result["ok"]:
            described.append(_described_record(record, result, cfg))
        else:
            failures.append({"id": record["id"], "error": (result or {}).get("error"),
                             "rejected": (result or {}).get("rejected", [])})
    # the promise this module makes: every record exactly once, in one of the two files
    assert len(described) + len(failures) == len(records), "a record was lost or duplicated"
    for record in described:
        for image in record["images"]:
            _place_image(data / image, out / image, cfg.image_mode)
    write_records(out, described)
    _write_jsonl(out / FAILURES_FILE, failures)
    summary = {"records": len(records), "described": len(described), "failed": len(failures),
               "from_cache": from_cache, "style": cfg.style, "model": cfg.chat.model,
               "prompt": f"describe-{PROMPT_VERSION}", "usage": usage.to_dict(prices),
               "cost_per_1000_records_usd": (usage.cost(prices) / max(1, len(records) - from_cache) * 1000
                                             if prices is not None and len(records) > from_cache else None),
               "out": str(out), "failures_file": str(out / FAILURES_FILE)}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def _described_record(record: dict, result: dict, cfg: DescribeConfig) -> dict:
    meta = dict(record.get("meta", {}))
    meta.setdefault("captions", source_captions(record))
    meta["describe"] = {"style": cfg.style, "model": cfg.chat.model, "prompt": f"describe-{PROMPT_VERSION}",
                        "attempts": result["attempts"]}
    described = {"id": record["id"], "images": record["images"],
                 "texts": [{"user": DESCRIBE_PROMPT, "assistant": result["description"]}], "meta": meta}
    if "split" in record:
        described["split"] = record["split"]
    return described


def _write_jsonl(path: Path, rows: list[dict]):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# held-out prompts

def heldout_prompt(description: str, style: str, key: str, seed: int = 0) -> str:
    """The first words of a held-out description that the model is given to complete: 6-7 words (short) or
    18-20 (long), the count picked per record from `key` so that it is the same on every run. At least three
    words are always left for the model to write."""
    lo, hi = PROMPT_WORDS[style]
    n = random.Random(f"heldout/{seed}/{key}").randint(lo, hi)
    words = description.split()
    return " ".join(words[: max(1, min(n, len(words) - 3))])


def heldout_prompts(records: list[dict], style: str, seed: int = 0) -> list[dict]:
    """[{"id", "image", "prompt", "reference"}] for description records (the first text turn of each)."""
    return [{"id": r["id"], "image": r["images"][0] if r["images"] else None, "question": r["texts"][0]["user"],
             "prompt": heldout_prompt(r["texts"][0]["assistant"], style, r["id"], seed),
             "reference": r["texts"][0]["assistant"]} for r in records]
