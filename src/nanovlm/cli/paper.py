"""nanovlm data describe | eval judge | eval rouge | paper: the NanoVLMs paper's pipeline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (add_command, add_json, add_overwrite, add_set_option, field_option, given_fields,
                     parse_set_pairs, print_json)

CHAT_FLAGS = {"concurrency": "requests in flight at once", "max_retries": "retries of a request after 429, 5xx, "
              "timeouts or malformed answers (exponential backoff, or the server's Retry-After)",
              "timeout_s": "seconds per request", "temperature": "sampling temperature of the LLM",
              "max_tokens": "longest answer asked for, in tokens"}
PAPER_FLAGS = {"sizes": "presets to train, in order", "n_scenes": "scenes drawn per style (without --data)",
               "image_size": "image side in pixels (the paper's is 224)",
               "budget": "time: equal minutes per size | steps: equal steps per size",
               "minutes": "training minutes per size (--budget time)", "steps": "steps per size (--budget steps)",
               "batch_size": "batch size", "lr": "learning rate (decoder)",
               "lr_vision": "learning rate of the vision encoder and projector",
               "image_tokens": "cls: ONE prefix token, as the paper | patches: every patch token (the control)",
               "eval_samples": "held-out samples per style scored", "seed": "random seed"}


def price_pair(text: str) -> tuple[float, float]:
    try:
        prompt, completion = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INPUT,OUTPUT USD per million tokens, e.g. 2.5,10; got {text!r}") \
            from None
    if prompt < 0 or completion < 0:
        raise argparse.ArgumentTypeError(f"prices cannot be negative, got {text!r}")
    return prompt, completion


def word_pair(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX words, e.g. 15,40; got {text!r}") from None
    return low, high


def add_chat_options(p, prefix: str = "", what: str = "the LLM"):
    """--base-url/--model (or --judge-base-url/--judge-model) and the shared request settings."""
    from ..chat import ChatSettings

    p.add_argument(f"--{prefix}base-url", dest="base_url", default=None, metavar="URL",
                   help=f"OpenAI-compatible endpoint of {what}, e.g. http://127.0.0.1:8000/v1 "
                        "(default: https://api.openai.com/v1)")
    p.add_argument(f"--{prefix}model", dest="chat_model", metavar="NAME",
                   default=None if prefix else ChatSettings.model,
                   help=f"model name {what} is asked for" + ("" if prefix else " (default: %(default)s)"))
    p.add_argument("--api-key-env", default=ChatSettings.api_key_env, metavar="VAR",
                   help="environment variable holding the API key (a local server needs none)")
    p.add_argument("--price", type=price_pair, metavar="IN,OUT",
                   help="USD per million input and output tokens, for the cost shown (default: OpenAI's list "
                        "price for known models, none for others)")
    for name, help in CHAT_FLAGS.items():
        field_option(p, ChatSettings, name, help, flag="--timeout" if name == "timeout_s" else None)


def chat_settings(args, model: str | None = None):
    from ..chat import ChatSettings

    return ChatSettings(base_url=args.base_url, model=model or args.chat_model, api_key_env=args.api_key_env,
                        price_per_million=args.price, **given_fields(args, CHAT_FLAGS))


def register(sub, groups):
    from .. import paper as paper_module
    from ..data.describe import DescribeConfig
    from ..paper import PaperConfig

    p = add_command(groups["data"], "describe", "rewrite each record's captions as a 3-4-year-old's description "
                    "with an LLM (ShortDesc 20-25 words, LongDesc 60-70)",
                    description="Rewrite each record's captions (COCO's five, or its texts) as a child's description "
                                "through any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, nanovlm serve). "
                                "Answers are checked (word count, simple words) and asked for again with the "
                                "reason; accepted ones are cached, so rerunning a killed run pays only for the rest. "
                                "Records that keep failing go to OUT/describe_failures.jsonl.")
    p.add_argument("--data", required=True, help="input dataset folder (e.g. from `nanovlm data coco`)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--style", choices=["short", "long"], default="short", help="description length")
    p.add_argument("--words", type=word_pair, metavar="MIN,MAX", help="accept another word range than the style's "
                   "(short 20,25; long 60,70), e.g. for a small local model")
    add_chat_options(p)
    p.add_argument("--json-schema", action="store_true", help="ask for {\"description\": ...} with the word range as "
                   "a pattern (response_format): a server that decodes under the schema (nanovlm serve, vLLM, "
                   "llama.cpp, OpenAI) then keeps every answer in range, even a small local model")
    p.add_argument("--split", choices=["train", "val", "test"], help="describe only this split (default: all)")
    field_option(p, DescribeConfig, "limit", "describe only the first N records (a trial run)")
    field_option(p, DescribeConfig, "quality_attempts", "answers asked for per record before it is reported")
    field_option(p, DescribeConfig, "common_words", "'simple' means among this many most common English words")
    field_option(p, DescribeConfig, "max_rare_share", "largest share of words outside them")
    p.add_argument("--cache", help="answer cache file (default: OUT/.describe-cache.sqlite)")
    p.add_argument("--symlink", action="store_true", help="symlink images instead of copying them")
    add_overwrite(p, "OUT/records.jsonl")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json(p)
    p.set_defaults(func=run_describe)

    p = add_command(groups["eval"], "judge", "an LLM grades held-out completions 0-10 on grammar, creativity, "
                    "consistency, meaningfulness and plot (the paper's Table 3); several models side by side")
    p.add_argument("--model", required=True, action="append", dest="models", metavar="MODEL",
                   help="model folder; repeat for several models in one table")
    p.add_argument("--data", required=True, help="dataset of descriptions (its test split is held out)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to complete")
    p.add_argument("--limit", type=int, help="grade only the first N held-out samples per model")
    p.add_argument("--batch-size", type=int, default=32, help="samples per generation batch")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: room for the longest reference)")
    add_chat_options(p, prefix="judge-", what="the judge")
    p.add_argument("--json-schema", action="store_true", help="ask for the grades' JSON schema as response_format "
                   "(OpenAI structured outputs, vLLM guided decoding, llama.cpp grammar, nanovlm serve): "
                   "what lets a small judge write valid grades; not every server takes it")
    p.add_argument("--cache", help="grade cache file: a rerun pays only for new completions")
    p.add_argument("--report", default="judge_report", help="writes REPORT.md and REPORT.json (Table 3) and "
                   "REPORT-<model>.jsonl per sample")
    add_overwrite(p, "an existing report")
    add_json(p)
    p.set_defaults(func=run_judge)

    p = add_command(groups["eval"], "rouge", "novelty: ROUGE-1 F1 of each held-out completion against its closest "
                    "training description (mean, median, share above 0.5, Figure 8 histogram)")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--data", required=True, help="dataset of descriptions: its train split is the reference set")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to complete")
    p.add_argument("--train-data", help="reference descriptions from this dataset's train split (default: --data)")
    p.add_argument("--limit", type=int, help="score only the first N held-out samples")
    p.add_argument("--batch-size", type=int, default=32, help="samples per generation batch")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: room for the longest reference)")
    p.add_argument("--stemmer", action="store_true", help="Porter-stem words first (rouge-score's use_stemmer)")
    p.add_argument("--report", help="REPORT.json/.jsonl/.md and REPORT.png (default: MODEL/rouge_SPLIT)")
    add_json(p)
    p.set_defaults(func=run_rouge)

    p = add_command(sub, "paper", "the NanoVLMs sweep: train mini, base and large with equal compute, plot their "
                    "loss curves (Figure 6), report grounding, ROUGE-1 novelty and (with a judge) Table 3",
                    description=paper_module.__doc__.strip())
    p.add_argument("--out", default=PaperConfig.out, help="folder for data, runs, figures and the report")
    p.add_argument("--data", help="a described dataset to train on (default: scenes, short + long)")
    for name, help in PAPER_FLAGS.items():
        field_option(p, PaperConfig, name, help)
    p.add_argument("--judge-model", dest="chat_model", metavar="NAME", help="grade completions with this LLM (Table 3)")
    p.add_argument("--judge-base-url", dest="base_url", metavar="URL", help="the judge's OpenAI-compatible endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the judge's key")
    add_set_option(p, "training option or model key for every size, e.g. warmup_steps=50 or decoder.dropout=0")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain every size and replace the report in OUT (without it, an interrupted sweep resumes, "
                        "new --sizes extend a finished one, and a report is never rewritten without a size it shows)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json(p)
    p.set_defaults(func=run_paper_command)


def run_describe(args):
    from ..data.describe import DescribeConfig, describe_dataset

    options = given_fields(args, ("limit", "quality_attempts", "common_words", "max_rare_share"))
    cfg = DescribeConfig(data=args.data, out=args.out, style=args.style, words=args.words, chat=chat_settings(args),
                         split=args.split, cache=args.cache, image_mode="symlink" if args.symlink else "copy",
                         json_schema=args.json_schema,
                         overwrite=args.overwrite, progress=not (args.quiet or args.json), **options)
    summary = describe_dataset(cfg)
    if args.json:
        print_json(summary)
        return
    usage = summary["usage"]
    cost = "" if usage["cost_usd"] is None else f", ${usage['cost_usd']:.4f}"
    print(f"described {summary['described']} of {summary['records']} records into {summary['out']} "
          f"({summary['from_cache']} from the cache; {usage['prompt_tokens']:,} + {usage['completion_tokens']:,} "
          f"tokens{cost})")
    if summary["failed"]:
        print(f"{summary['failed']} records failed the checks or the endpoint: see {summary['failures_file']}")


def _load(path: str):
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(resolve_model_dir(path))


def run_judge(args):
    from ..config import ConfigError
    from ..evaluate import write_report
    from ..evaluate.judge import JudgeRun, grades_response_format, judge_models, model_label

    report = Path(args.report).with_suffix("") if Path(args.report).suffix in (".md", ".json") else Path(args.report)
    if report.with_suffix(".md").exists() and not args.overwrite:
        raise FileExistsError(f"{report.with_suffix('.md')} already exists; choose another --report or --overwrite")
    settings = chat_settings(args, model=args.chat_model or "gpt-4o")
    if args.json_schema:
        settings.response_format = grades_response_format()
    if len(set(args.models)) != len(args.models):
        raise ConfigError(f"a --model is given twice ({', '.join(args.models)}); give each model once")
    labels = [model_label(m) for m in args.models]
    if len(set(labels)) != len(labels):   # runs/a/best and runs/b/best differ; a/x/best and b/x/best need the path
        labels = list(args.models)
    models = {label: _load(path) for label, path in zip(labels, args.models)}
    run = JudgeRun(data=args.data, split=args.split, limit=args.limit, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, judge=settings, cache=args.cache)
    result = judge_models(models, run, progress=not args.json)
    for label, one in result["results"].items():
        write_report(one, f"{report}-{label.replace('/', '_')}.json")
    table = {"judge": settings.model, "data": args.data, "split": args.split, "rows": result["rows"]}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(table, indent=1))
    report.with_suffix(".md").write_text(f"# Table 3: judged by {settings.model} on {args.data} ({args.split})\n\n"
                                         f"{result['table']}\n")
    if args.json:
        print_json({**table, "report": str(report.with_suffix(".json"))})
    else:
        print(result["table"])
        print(f"\nreport: {report.with_suffix('.md')}  per sample: {report}-<model>.jsonl")


def run_rouge(args):
    from ..evaluate import evaluate, write_report
    from ..evaluate.rouge import RougeNovelty, plot_histogram

    scorer = RougeNovelty.from_training_data(args.train_data or args.data, use_stemmer=args.stemmer)
    model = _load(args.model)
    result = evaluate(model, args.data, scorer, split=args.split, limit=args.limit, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, progress=not args.json)
    report = Path(args.report or Path(args.model) / f"rouge_{args.split}")
    report = report.with_suffix("") if report.suffix in (".json", ".jsonl", ".md", ".png") else report
    paths = write_report(result, report.with_suffix(".json"))
    figure = plot_histogram([s["score"]["rouge1"] for s in result["samples"]], report.with_suffix(".png"))
    if args.json:
        print_json({"summary": result["summary"], "figure": str(figure), "report": str(paths["summary"])})
    else:
        print(result["table"])
        print(f"\nFigure 8: {figure}  per sample: {paths['samples']}")


def run_paper_command(args):
    from ..chat import ChatSettings, make_client
    from ..paper import PaperConfig, run_paper

    judge = None
    if args.chat_model or args.base_url:
        judge = ChatSettings(base_url=args.base_url, model=args.chat_model or "gpt-4o", api_key_env=args.api_key_env)
        make_client(judge)   # a missing key fails now, not after an hour of training
    cfg = PaperConfig(out=args.out, data=args.data, judge=judge, train_overrides=parse_set_pairs(args.set),
                      overwrite=args.overwrite, progress=not (args.quiet or args.json),
                      **given_fields(args, PAPER_FLAGS))
    report = run_paper(cfg, log=(lambda *a: None) if args.json else print)
    if args.json:
        print_json(report)
