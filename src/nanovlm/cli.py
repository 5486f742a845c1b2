"""The `nanovlm` command: a thin shell that parses arguments and calls the library.

Every error a user can cause (bad file, unknown preset, broken dataset) is printed as one `error: ...` line with
exit status 2; a traceback means a bug in nanovlm."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def cmd_info(args):
    from .info import describe_preset

    print(describe_preset(args.preset, overrides=parse_overrides(args.set)))


def cmd_bench(args):
    from .bench import format_results, run_benchmark

    results = run_benchmark(args.preset, threads=args.threads, batch_size=args.batch_size, text_len=args.text_len,
                            prompt_len=args.prompt_len, new_tokens=args.new_tokens, train_dtype=args.train_dtype,
                            decode_dtype=args.decode_dtype, steps=args.steps, device=args.device,
                            compile=args.compile)
    print(format_results(results))


def cmd_data_scenes(args):
    from .data.synth import make_scenes

    stats = make_scenes(args.out, n=args.n, style=args.style, image_size=args.image_size, seed=args.seed,
                        overwrite=args.overwrite)
    print(f"wrote {stats['n']} scenes to {args.out} ({stats['images_per_s']:.0f} images/s)")


def cmd_data_coco(args):
    from .data.coco import import_coco

    stats = import_coco(args.annotations, args.images, args.out, seed=args.seed, val_fraction=args.val_fraction,
                        test_size=args.test_size, image_mode="symlink" if args.symlink else "copy",
                        missing_images="skip" if args.skip_missing else "error", overwrite=args.overwrite)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))


def cmd_train(args):
    from .train import TrainConfig, split_overrides, train

    train_kw, model_kw = split_overrides(parse_overrides(args.set))
    for name in ("steps", "batch_size", "lr", "seed", "num_workers", "precision", "tokenizer", "threads"):
        if getattr(args, name) is not None:
            train_kw[name] = getattr(args, name)
    tcfg = TrainConfig(preset=args.preset, data=args.data, out=args.out or f"runs/{args.preset}", model=model_kw,
                       resume=args.resume, progress=not args.quiet, **train_kw)
    summary = train(tcfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(summary))


def format_summary(summary: dict) -> str:
    best = summary["best_val_loss"]
    return "\n".join([
        f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s"
        + (" (stopped early: validation loss stopped improving)" if summary["stopped_early"] else ""),
        f"final train loss {summary['final_loss']:.4f}" + (f", best validation loss {best:.4f}" if best else ""),
        f"best model: {summary['best']}   last checkpoint: {summary['last']}   metrics: {summary['metrics']}",
    ])


def cmd_generate(args):
    import torch

    from .hub import resolve_model_dir
    from .model.vlm import VisionLanguageModel
    from .predict import complete, open_image

    model = VisionLanguageModel.from_pretrained(resolve_model_dir(args.model), device=args.device,
                                                dtype=torch.bfloat16 if args.bf16 else None)
    images = [open_image(path) for path in args.image]
    completions = complete(model, images, answer_starts=[args.prompt] * len(images),
                           questions=[args.question] * len(images), max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for path, text in zip(args.image, completions):
        prefix = f"{path}: " if len(args.image) > 1 else ""
        print(f"{prefix}{args.prompt}{text}")


def cmd_demo(args):
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, n_scenes=args.n, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                        eval_scenes=args.eval_scenes, train_overrides=parse_overrides(args.set)))


def cmd_eval_grounding(args):
    from .evaluate import grounding
    from .evaluate.completion import evaluate_grounding, write_report
    from .hub import resolve_model_dir
    from .model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(resolve_model_dir(args.model), device=args.device)
    result = evaluate_grounding(model, args.data, split=args.split, limit=args.limit, batch_size=args.batch_size)
    print(grounding.format_table(result["summary"]))
    report = args.report or str(Path(args.model) / f"grounding_{args.split}.json")
    write_report(result, report)
    print(f"per-scene results: {report}")


def parse_overrides(pairs: list[str] | None) -> dict:
    """--set key=value pairs -> {key: value}; values are parsed as JSON when they can be (numbers, true/false,
    lists), else kept as strings."""
    import json

    from .config import ConfigError

    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value (e.g. decoder.n_layer=4), got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig

    demo_defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="nanovlm", description="Build, train, evaluate and serve small "
                                     "vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameter count and per-module share of a preset (vs the paper's Table 2)")
    p.add_argument("preset", help="preset name: mini, base, large, nanovlm-222m, demo, tiny")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. decoder.n_layer=4")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="measure train-step time, tokens/s, decode tokens/s and peak memory")
    p.add_argument("preset", nargs="?", default="nanovlm-222m")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--batch-size", type=int, default=2, help="train-step batch size (default 2)")
    p.add_argument("--text-len", type=int, default=128, help="text tokens per training sample (default 128)")
    p.add_argument("--prompt-len", type=int, default=20, help="text tokens in the decode prompt (default 20)")
    p.add_argument("--new-tokens", type=int, default=50, help="tokens to decode (default 50)")
    p.add_argument("--train-dtype", choices=["fp32", "bf16"], default="bf16", help="autocast dtype for training")
    p.add_argument("--decode-dtype", choices=["fp32", "bf16"], default="bf16", help="weight dtype for decoding")
    p.add_argument("--steps", type=int, default=3, help="timed train steps after one warm-up (default 3)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.set_defaults(func=cmd_bench)

    data = sub.add_parser("data", help="make or import datasets").add_subparsers(dest="source", required=True,
                                                                              metavar="SOURCE")
    p = data.add_parser("scenes", help="procedurally drawn scenes with child-language descriptions or Q&A")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--n", type=int, default=10000, help="number of scenes (default 10000)")
    p.add_argument("--style", choices=["short", "long", "vqa"], default="short",
                   help="short (20-25 words), long (60-70 words) descriptions, or vqa question-answer pairs")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    p.set_defaults(func=cmd_data_scenes)

    p = data.add_parser("coco", help="import COCO captions (captions_*.json + image folder)")
    p.add_argument("--annotations", required=True, help="COCO captions JSON, e.g. captions_train2017.json")
    p.add_argument("--images", required=True, help="folder holding the COCO images")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of non-test images for validation")
    p.add_argument("--test-size", type=int, default=500, help="images held out for testing (default 500)")
    p.add_argument("--symlink", action="store_true", help="symlink images instead of copying them")
    p.add_argument("--skip-missing", action="store_true", help="skip (with a warning) images missing on disk "
                   "instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    p.set_defaults(func=cmd_data_coco)

    p = sub.add_parser("train", help="train a model on a dataset folder")
    p.add_argument("--preset", default="demo", help="model preset (default demo)")
    p.add_argument("--data", required=True, help="dataset folder (records.jsonl + images)")
    p.add_argument("--out", help="run folder for checkpoints and metrics (default runs/PRESET)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--tokenizer", help="tokenizer.json to use instead of training a BPE on the data")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last exactly where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training option (warmup_steps=50, patience=3, freeze=[\"vision\"], ...) or model key "
                        "(decoder.n_layer=2); repeatable")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="complete a description (or answer a question) about image(s)")
    p.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    p.add_argument("--image", required=True, action="append", help="image file; repeat for several")
    p.add_argument("--prompt", default="", help="the first words of the answer, e.g. \"There is\"")
    p.add_argument("--question", default="Describe the picture.", help="the user's question")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="run with bf16 weights (faster on CPUs with bf16)")
    p.set_defaults(func=cmd_generate)

    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="task", required=True,
                                                                            metavar="TASK")
    p = evaluate.add_parser("grounding", help="complete held-out scene descriptions and score the colours, "
                            "shapes, counts and positions they name against the ground truth")
    p.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    p.add_argument("--data", required=True, help="scenes dataset folder (with meta ground truth)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, help="score only the first N scenes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", help="JSON file for per-scene results (default MODEL/grounding_SPLIT.json)")
    p.set_defaults(func=cmd_eval_grounding)

    p = sub.add_parser("demo", help="the main job: make scenes, train the demo model on CPU, report grounding "
                       "accuracy and sample completions, save the model")
    p.add_argument("--out", default=demo_defaults.out, help="folder for data, checkpoints, report and model")
    p.add_argument("--n", type=int, default=demo_defaults.n_scenes,
                   help=f"scenes to draw (default {demo_defaults.n_scenes})")
    p.add_argument("--steps", type=int, default=demo_defaults.steps,
                   help=f"training steps (default {demo_defaults.steps})")
    p.add_argument("--batch-size", type=int, default=demo_defaults.batch_size)
    p.add_argument("--seed", type=int, default=demo_defaults.seed)
    p.add_argument("--eval-scenes", type=int, default=demo_defaults.eval_scenes,
                   help=f"held-out scenes to score (default {demo_defaults.eval_scenes})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training option or model key for the demo run, e.g. lr_vision=7e-4 or decoder.n_layer=4")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
