"""nanovlm eval TASK: one subcommand per scorer in the registry (nanovlm.evaluate), all run by the same runner."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_json, print_json


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def register(sub, groups):
    from ..evaluate import available_scorers

    for name, scorer in available_scorers().items():
        if name.startswith("_") or name in groups["eval"].choices:
            continue   # tests' private toy tasks; tasks whose module registered its own command
        p = add_command(groups["eval"], name, scorer.description or f"evaluate on the {name} task")
        p.add_argument("--model", required=True, help="model folder (or Hub repo id)")
        p.add_argument("--data", required=True, help="dataset folder (records.jsonl + images)")
        p.add_argument("--split", choices=["train", "val", "test"], default=None,
                       help=f"split to score (default: {scorer.default_split})")
        p.add_argument("--limit", type=positive_int, help="score only the first N questions")
        p.add_argument("--batch-size", type=positive_int, default=32, help="questions per generation batch")
        p.add_argument("--max-new-tokens", type=positive_int,
                       help="generation budget per question (default: the task's own)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
        p.add_argument("--report", help=f"report files REPORT.json (summary), .jsonl (per question), .md (tables); "
                       f"default: MODEL/{name}_SPLIT.json")
        for key, spec in scorer.options.items():
            p.add_argument("--" + key.replace("_", "-"), dest=f"option_{key}", type=spec.get("type", str),
                           default=spec.get("default"), help=spec.get("help", ""))
        add_json(p)
        p.set_defaults(func=run, task=name)


def run(args):
    from ..evaluate import evaluate, get_scorer, write_report
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel

    options = {k[len("option_"):]: v for k, v in vars(args).items() if k.startswith("option_")}
    scorer = get_scorer(args.task, **options)
    split = args.split or scorer.default_split
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: dataset folder not found")
    model_dir = resolve_model_dir(args.model)
    model = VisionLanguageModel.from_pretrained(model_dir, device=args.device)
    result = evaluate(model, args.data, scorer, split=split, limit=args.limit, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, progress=not args.json)
    report = Path(args.report or (Path(model_dir) if Path(model_dir).is_dir() else Path(".")))
    if report.is_dir():   # a folder (the model's by default) gets TASK_SPLIT.json, .jsonl and .md
        report = report / f"{args.task}_{split}.json"
    paths = write_report(result, report)
    if args.json:
        print_json({"task": args.task, "split": split, "summary": result["summary"],
                    "report": {k: str(v) for k, v in paths.items()}})
    else:
        print(result["table"])
        print(f"\nreport: {paths['summary']}  per question: {paths['samples']}  tables: {paths['table']}")
