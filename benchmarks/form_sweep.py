"""Which recipe makes the VLM see form? Train several recipes on the `shapes` data side by side, then score each.

    nanovlm data shapes --out data/shapes --n 20000
    python benchmarks/form_sweep.py --data data/shapes --out runs/form_sweep --steps 3000 --parallel 4
    python benchmarks/form_sweep.py ... --only old uniform-1e-3 --device cuda     # a subset, on a GPU

Each recipe is `nanovlm train --preset demo` with the recipe's options (batch 32, no augmentation, linear probe of
the frozen encoder every 250 steps), then `nanovlm eval shapes` on the test split. The summary (summary.json and a
Markdown table on stdout) holds, per recipe: the probe's shape accuracy over training, the VLM's answers per
attribute, on seen and held-out colour-shape combinations, and the training minutes. Steps-to-accuracy does not
depend on the machine, so a GPU sweep tells which recipe to time on the CPU; the minutes only compare recipes run
side by side on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OLD = ["--lr", "2e-3", "--set", "lr_vision=1e-4", "--set", "lr_projector=1e-4"]
EFFNET = ["--set", "vision.patch_stem=efficientnet_lite0", "--set", "vision.n_layer=0", "--set", "vision.use_cls=false",
          "--set", "vision.image_mean=0.498,0.498,0.498", "--set", "vision.image_std=0.502,0.502,0.502",
          "--lr", "2e-3", "--set", "lr_vision=1e-4", "--set", "lr_projector=2e-3",
          "--set", "vision_init={efficientnet}"]

RESNET = ["--set", "vision.patch_stem=resnet"]
# The sixth round's finding: the decoder reads one image token only with cosine attention and no pixel shuffle.
# Trained with lr 1e-3 everywhere and the max read-out over tokens.
COSINE = ["--set", "projector.shuffle_factor=1", "--set", "decoder.qk_norm=10"]
ROUND7 = RESNET + COSINE + ["--lr", "1e-3", "--set", "lr_vision=1e-3", "--set", "lr_projector=1e-3",
                            "--set", "max_readout_weight=1", "--set", "max_readout_pool=tokens"]


def changed(options: list[str], **values) -> list[str]:
    """`options` with some `--set key=value` pairs changed (the CLI refuses a key set twice); keys use __ for dots."""
    values = {key.replace("__", "."): value for key, value in values.items()}
    return [f"{option.split('=')[0]}={values[option.split('=')[0]]}" if option.split("=")[0] in values else option
            for option in options]


BOTH = ["--data", "{both}"]   # trained on `--per-thing both` pictures (its shape and its colour asked together)
EFFNET_128 = EFFNET + ["--set", "vision.image_size=128", "--set", "vision.patch_size=16"]
EFFNET_64 = EFFNET + ["--set", "vision.image_size=64", "--set", "vision.patch_size=8"]

RECIPES = {   # name -> `nanovlm train` options on top of the common ones
    "old": OLD,
    "old+contrastive": OLD + ["--set", "contrastive_weight=0.5"],
    "uniform-5e-4": ["--lr", "5e-4"],
    "uniform-1e-3": ["--lr", "1e-3"],
    "uniform-2e-3": ["--lr", "2e-3"],
    "uniform-1e-3+contrastive": ["--lr", "1e-3", "--set", "contrastive_weight=0.5"],
    "vision-2e-3,decoder-5e-4": ["--lr", "5e-4", "--set", "lr_vision=2e-3", "--set", "lr_projector=2e-3"],
    "uniform-1e-3,4-vit-blocks": ["--lr", "1e-3", "--set", "vision.n_layer=4"],
    "uniform-1e-3,no-shuffle": ["--lr", "1e-3", "--set", "projector.shuffle_factor=1"],
    "uniform-1e-3,no-clip": ["--lr", "1e-3", "--set", "grad_clip=0"],
    "uniform-1e-3,stem-256": ["--lr", "1e-3", "--set", "vision.stem_channels=256"],
    "uniform-1e-3+contrastive,4-vit-blocks": ["--lr", "1e-3", "--set", "contrastive_weight=0.5",
                                              "--set", "vision.n_layer=4"],
    "resnet,uniform-1e-3": RESNET + ["--lr", "1e-3"],
    "resnet,uniform-2e-3": RESNET + ["--lr", "2e-3"],
    "resnet,old": RESNET + OLD,
    "resnet,vision-1e-3,decoder-2e-3": RESNET + ["--lr", "2e-3", "--set", "lr_vision=1e-3", "--set", "lr_projector=1e-3"],
    "resnet,uniform-1e-3+contrastive": RESNET + ["--lr", "1e-3", "--set", "contrastive_weight=0.5"],
    "resnet,uniform-1e-3,6000-steps": RESNET + ["--lr", "1e-3", "--steps", "6000"],
    "old,6000-steps": OLD + ["--steps", "6000"],
    "effnet-64px": EFFNET + ["--set", "vision.image_size=64", "--set", "vision.patch_size=8"],
    "effnet-128px": EFFNET + ["--set", "vision.image_size=128", "--set", "vision.patch_size=16"],
    "effnet-128px,6000-steps": EFFNET + ["--set", "vision.image_size=128", "--set", "vision.patch_size=16",
                                         "--steps", "6000"],
    # Seventh round: step counts are what 10 minutes buy on the 2-core CPU for each recipe
    "cosine,resnet,both,1850-steps": ROUND7 + BOTH + ["--steps", "1850"],
    "cosine,resnet,one,1850-steps": ROUND7 + ["--steps", "1850"],
    "cosine,resnet,both,3500-steps": ROUND7 + BOTH + ["--steps", "3500"],
    "cosine,resnet,both,qk-20,1850-steps": changed(ROUND7, decoder__qk_norm=20) + BOTH + ["--steps", "1850"],
    "cosine,resnet,both,lr-2e-3,1850-steps": changed(ROUND7, lr_vision=2e-3, lr_projector=2e-3) + BOTH
                                             + ["--lr", "2e-3", "--steps", "1850"],
    "cosine,resnet,both,no-readout,1850-steps": changed(ROUND7, max_readout_weight=0) + BOTH + ["--steps", "1850"],
    "cosine,resnet,both,4-decoder-layers,1850-steps": ROUND7 + BOTH + ["--set", "decoder.n_layer=4", "--steps", "1850"],
    "cosine,resnet,both,batch-64,1000-steps": ROUND7 + BOTH + ["--batch-size", "64", "--steps", "1000"],
    "cosine,effnet-128px,both,860-steps": EFFNET_128 + COSINE + BOTH + ["--steps", "860"],
    "cosine,effnet-128px,both,1700-steps": EFFNET_128 + COSINE + BOTH + ["--steps", "1700"],
    "cosine,effnet-128px,one,860-steps": EFFNET_128 + COSINE + ["--steps", "860"],
    "cosine,effnet-64px,both,2250-steps": EFFNET_64 + COSINE + BOTH + ["--steps", "2250"],
    "cosine,effnet-64px,both,lr-vision-1e-3,2250-steps": changed(EFFNET_64, lr_vision=1e-3) + COSINE + BOTH
                                                        + ["--steps", "2250"],
    "cosine,effnet-128px,both,4-decoder-layers,860-steps": EFFNET_128 + COSINE + BOTH + ["--set", "decoder.n_layer=4",
                                                                                      "--steps", "860"],
    "cosine,effnet-128px,one,1700-steps": EFFNET_128 + COSINE + ["--steps", "1700"],
    "cosine,effnet-64px,both,4-decoder-layers,2250-steps": EFFNET_64 + COSINE + BOTH + ["--set", "decoder.n_layer=4",
                                                                                     "--steps", "2250"],
}


def run_recipe(name: str, extra: list[str], args) -> dict:
    out = Path(args.out) / name.replace(",", "_").replace("+", "_")
    cli = [sys.executable, "-m", "nanovlm.cli"]
    common = ["--preset", "demo", "--data", args.data, "--out", str(out), "--overwrite", "--steps", str(args.steps),
              "--batch-size", "32", "--device", args.device, "--threads", str(args.threads),
              "--set", "warmup_steps=100", "--set", "augment=false", "--set", "eval_every=500",
              "--set", "probe_every=250", "--set", "progress=false"]
    extra = [option.format(efficientnet=args.efficientnet, both=args.data_both) for option in extra]
    log = open(f"{out}.log", "w")
    start = time.time()
    try:
        trained = subprocess.run(cli + ["train", *common, *extra], stdout=log, stderr=subprocess.STDOUT,
                                 timeout=args.time_limit).returncode
    except subprocess.TimeoutExpired:   # scored anyway, from the best checkpoint saved so far
        trained = "stopped at the time limit"
    minutes = (time.time() - start) / 60
    report = f"{out}/shapes_test"
    scored = subprocess.run(cli + ["eval", "shapes", "--model", f"{out}/best", "--data", args.data, "--limit",
                                   str(args.questions), "--batch-size", "128", "--device", args.device,
                                   "--report", report], stdout=log, stderr=subprocess.STDOUT).returncode
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")] if (out / "metrics.jsonl").exists() else []
    result = {"recipe": name, "train_rc": trained, "eval_rc": scored, "minutes": round(minutes, 2),
              "steps": max((r["step"] for r in rows), default=0),
              "probe_shape": [(r["step"], round(r["probe_shape"], 3)) for r in rows if "probe_shape" in r]}
    if scored == 0:
        summary = json.load(open(f"{report}.json"))
        summary = summary.get("summary", summary)
        result.update({k: round(v, 4) for k, v in summary.items() if k.endswith("accuracy")})
        result["by_combination"] = summary.get("by_combination")
    print(json.dumps(result), flush=True)
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| recipe | steps | minutes | probe shape (last) | shape | colour | count | relation |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        probe = r["probe_shape"][-1][1] if r["probe_shape"] else float("nan")
        cells = [f"{100 * r.get(k, float('nan')):.1f}%" for k in
                 ("shape_accuracy", "color_accuracy", "count_accuracy", "relation_accuracy")]
        lines.append(f"| {r['recipe']} | {r['steps']} | {r['minutes']} | {100 * probe:.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--out", default="runs/form_sweep")
    parser.add_argument("--data-both", default="data/shapes-both",
                        help="`nanovlm data shapes --per-thing both` pictures, for the recipes trained on them")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=1, help="recipes trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", help="recipe names")
    parser.add_argument("--questions", type=int, default=1000, help="test questions scored per recipe")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds before a training is stopped")
    parser.add_argument("--efficientnet", default="weights/efficientnet_lite0.safetensors",
                        help="converted ImageNet weights for the effnet recipes (nanovlm convert efficientnet)")
    args = parser.parse_args()
    names = args.only or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda n: run_recipe(n, RECIPES[n], args), names))
    json.dump(results, open(Path(args.out) / "summary.json", "w"), indent=1)
    print(markdown(results))


if __name__ == "__main__":
    main()
