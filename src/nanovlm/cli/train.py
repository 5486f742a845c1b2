"""nanovlm train | demo"""
from __future__ import annotations

import os

from .common import (add_command, add_json, add_overwrite, add_set_option, field_option, given_fields, merge_flags,
                     parse_set_pairs, print_json)

# TrainConfig fields that also have a flag of their own
TRAIN_FLAGS = {"steps": "optimizer steps", "batch_size": "samples per micro-batch (per process)",
               "lr": "base learning rate", "seed": "random seed", "num_workers": "DataLoader worker processes",
               "precision": "auto (bf16 autocast where bf16 is fast, else fp32), fp32, bf16 or fp16 (CUDA)",
               "threads": "torch CPU threads (0 = torch's choice)",
               "device": "auto, cpu, cuda or cuda:N",
               "tokenizer": "tokenizer.json to use instead of training a BPE on the data",
               "language": "pretrained language model: a Hugging Face Llama folder, a .gguf file or a Hub id; the "
                           "run uses its tokenizer and chat format and trains it at a low rate (lr_decoder 5e-5); "
                           "--set language_init=random keeps its architecture and tokenizer with fresh weights",
               "vision": "pretrained SigLIP vision encoder: a Hugging Face folder or Hub id (with --language; "
                         "lr_vision 5e-5); without it the preset's encoder starts fresh"}
DEMO_FLAGS = {"n_scenes": ("--n", "scenes to draw"), "steps": ("--steps", "training steps"),
              "batch_size": ("--batch-size", "batch size"), "seed": ("--seed", "random seed"),
              "eval_scenes": ("--eval-scenes", "held-out scenes to score")}


def register(sub, groups):
    from ..demo import DemoConfig
    from ..train import TrainConfig

    p = add_command(sub, "train", "train a model on a dataset folder",
                    description="Train a model on a dataset folder. Any training option or model key can be set "
                                "with --set KEY=VALUE; `nanovlm train --help` lists the common ones as flags.")
    p.add_argument("--preset", default="demo", help="model preset; a preset with a training recipe (documents) takes "
                                                     "its steps, batch size, lr and options from it unless given")
    p.add_argument("--data", required=True, help="dataset folder (records.jsonl + images)")
    p.add_argument("--out", help="run folder for checkpoints and metrics (default: runs/PRESET)")
    for name, help in TRAIN_FLAGS.items():
        field_option(p, TrainConfig, name, help)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last exactly where it stopped")
    add_overwrite(p, "a run already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json(p)
    add_set_option(p, "training option (warmup_steps=50, patience=3, freeze=vision, lr_vision=1e-4, ...) or "
                      "model key (decoder.n_layer=2, vision.image_size=128)")
    p.set_defaults(func=run_train)

    p = add_command(sub, "demo", "the main job: make scenes, train the demo model on CPU, report grounding "
                    "accuracy and sample completions, save the model")
    p.add_argument("--out", default=DemoConfig.out, help="folder for data, checkpoints, report and model")
    for name, (flag, help) in DEMO_FLAGS.items():
        field_option(p, DemoConfig, name, help, flag=flag)
    add_overwrite(p, "the data, run and model of an earlier demo in OUT")
    add_set_option(p, "training option or model key for the demo run, e.g. lr_vision=7e-4 or decoder.n_layer=4")
    p.set_defaults(func=run_demo)


def run_train(args):
    from ..train import TrainConfig, train

    options = merge_flags(parse_set_pairs(args.set), given_fields(args, TRAIN_FLAGS))
    if args.quiet:
        options["progress"] = False
    tcfg = TrainConfig.from_options({**options, "preset": args.preset, "data": args.data,
                                     "out": args.out or f"runs/{args.preset}", "resume": args.resume,
                                     "overwrite": args.overwrite})
    summary = train(tcfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print_json(summary) if args.json else print(format_summary(summary))


def format_summary(summary: dict) -> str:
    best = summary["best_val_loss"]
    return "\n".join([
        f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s"
        + (" (stopped early: validation loss stopped improving)" if summary["stopped_early"] else ""),
        f"final train loss {summary['final_loss']:.4f}" + (f", best validation loss {best:.4f}" if best else ""),
        f"best model: {summary['best']}   last checkpoint: {summary['last']}   metrics: {summary['metrics']}",
    ])


def run_demo(args):
    from ..demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, overwrite=args.overwrite, train_overrides=parse_set_pairs(args.set),
                        **given_fields(args, DEMO_FLAGS)))
