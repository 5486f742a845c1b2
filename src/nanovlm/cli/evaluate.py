"""nanovlm eval grounding"""
from __future__ import annotations

from pathlib import Path

from .common import add_command


def register(sub, groups):
    p = add_command(groups["eval"], "grounding", "complete held-out scene descriptions and score the colours, "
                    "shapes, counts and positions they name against the ground truth")
    p.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    p.add_argument("--data", required=True, help="scenes dataset folder (with meta ground truth)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score")
    p.add_argument("--limit", type=int, help="score only the first N scenes")
    p.add_argument("--batch-size", type=int, default=64, help="scenes per generation batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--report", help="JSON file for per-scene results (default: MODEL/grounding_SPLIT.json)")
    p.set_defaults(func=run_grounding)


def run_grounding(args):
    from ..evaluate import evaluate, write_report
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(resolve_model_dir(args.model), device=args.device)
    result = evaluate(model, args.data, "grounding", split=args.split, limit=args.limit, batch_size=args.batch_size)
    print(result["table"])
    paths = write_report(result, args.report or str(Path(args.model) / f"grounding_{args.split}.json"))
    print(f"per-scene results: {paths['samples']}")
