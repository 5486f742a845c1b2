"""Does the vision encoder see form? Linear-probe measurements behind README's section of that name.

    python benchmarks/form_probe.py init                 # probes of encoders as built (random / pretrained)
    python benchmarks/form_probe.py tokens --efficientnet weights/efficientnet_lite0.safetensors   # one token's view
    python benchmarks/form_probe.py supervised --steps 300   # the demo encoder trained as a plain shape classifier
    python benchmarks/form_probe.py supervised --stem resnet --steps 1000 --save runs/resnet_shapes.safetensors
    python benchmarks/form_probe.py plot runs/a runs/b --out benchmarks/form_probe.png   # probe_shape vs step
    python benchmarks/form_probe.py oracle --data data/shapes --out data/shapes-oracle   # the decoder's test

`oracle` copies a shapes dataset with each picture replaced by a perfect object-local code: the 8 x 8 patch under
each thing's centre holds its shape (red channel) and colour (green) as rows of a Hadamard matrix, and a full blue
channel. With `--set vision.patch_stem=linear` every thing is one token that names its shape and colour, so what
a VLM trained on it fails to answer is the decoder's (and projector's) failure, not the encoder's (README, "Sixth
round"). `init` and `supervised` print one JSON line per measurement. The probe (nanovlm.probe.ShapeProbe) fits a linear
classifier for shape (16 classes, chance 6%) and colour (10, chance 10%) on pooled encoder outputs of one-shape
pictures; `nanovlm train --set probe_every=N` logs the same numbers during VLM training.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F

from nanovlm.config import from_name
from nanovlm.data.shapes import ALL_COLORS, ALL_SHAPES
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.probe import ShapeProbe, linear_probe_accuracy, probe_pictures

ENCODERS = {   # name -> demo-preset overrides
    "demo (convnet stem, patch 8)": {},
    "linear stem, patch 8": {"vision.patch_stem": "linear"},
    "conv2 stem, patch 8": {"vision.patch_stem": "conv2"},
    "convnet stem, 128 px, patch 16": {"vision.image_size": 128, "vision.patch_size": 16},
    "efficientnet_lite0 random, 128 px": {"vision.patch_stem": "efficientnet_lite0", "vision.image_size": 128,
                                          "vision.patch_size": 16, "vision.n_layer": 0, "vision.use_cls": False,
                                          "vision.image_mean": [0.498] * 3, "vision.image_std": [0.502] * 3},
}


def build(overrides: dict, vision_init: str | None = None) -> VisionLanguageModel:
    cfg = from_name("demo", overrides)
    cfg.image_token_id = cfg.decoder.vocab_size - 1
    model = VisionLanguageModel(cfg)
    if vision_init:
        from nanovlm.convert.efficientnet import load_vision_init
        load_vision_init(model, vision_init)
    return model


def run_init(args):
    encoders = dict(ENCODERS)
    if args.efficientnet:
        big = ENCODERS["efficientnet_lite0 random, 128 px"]
        encoders["efficientnet_lite0 ImageNet, 128 px, patch 16"] = (big, args.efficientnet)
        small = {**big, "vision.image_size": 64, "vision.patch_size": 8}
        encoders["efficientnet_lite0 ImageNet, 64 px, patch 8"] = (small, args.efficientnet)
    for name, spec in encoders.items():
        if args.only and args.only not in name:
            continue
        overrides, init = spec if isinstance(spec, tuple) else (spec, None)
        torch.manual_seed(0)
        model = build(overrides, init)
        probe = ShapeProbe(model.cfg.vision, n=args.n)
        print(json.dumps({"encoder": name, **{k: round(v, 3) for k, v in probe(model).items()}}), flush=True)


TOKEN_ENCODERS = {   # name -> (demo-preset overrides, needs --efficientnet)
    "scattering, 64 px, patch 8": ({"vision.patch_stem": "scattering", "vision.use_cls": False}, False),
    "efficientnet_lite0 ImageNet, 64 px, patch 8": ({**ENCODERS["efficientnet_lite0 random, 128 px"],
                                                     "vision.image_size": 64, "vision.patch_size": 8}, True),
    "efficientnet_lite0 ImageNet, 128 px, patch 16": (ENCODERS["efficientnet_lite0 random, 128 px"], True),
}


def run_tokens(args):
    """What ONE token tells: the shape of a one-thing picture read from the stem's token under the thing's centre
    (and from the 3 x 3 tokens around it), not from all tokens pooled. Binding needs it: the decoder finds a thing
    by looking at its tokens. The stems' raw output: the scattering coefficients (no projection), the ImageNet
    blocks' channels."""
    for name, (overrides, needs_weights) in TOKEN_ENCODERS.items():
        if needs_weights and not args.efficientnet:
            continue
        model = build(overrides, args.efficientnet if needs_weights else None).eval()
        stem = model.vision.patch_stem
        images, shape_ids, color_ids, centres = probe_pictures(model.cfg.vision, args.n, with_centres=True)
        with torch.no_grad():
            maps = torch.cat([stem.fixed(images[i:i + 200]) if hasattr(stem, "fixed") else stem.trunk(images[i:i + 200])
                              for i in range(0, len(images), 200)])                # (N, C, rows, cols)
        rows, cols = maps.shape[-2:]
        index = torch.tensor([min(int(y * rows), rows - 1) * cols + min(int(x * cols), cols - 1) for x, y in centres])
        result = {"encoder": name}
        for k in (1, 3):
            tokens = F.unfold(maps, k, padding=k // 2).transpose(1, 2)[torch.arange(len(maps)), index]
            result[f"shape_{k}x{k}"] = round(linear_probe_accuracy(tokens, shape_ids, len(ALL_SHAPES)), 3)
            result[f"colour_{k}x{k}"] = round(linear_probe_accuracy(tokens, color_ids, len(ALL_COLORS)), 3)
        pooled = maps.flatten(2)
        result["shape_pooled"] = round(linear_probe_accuracy(torch.cat([pooled.mean(-1), pooled.amax(-1)], -1),
                                                             shape_ids, len(ALL_SHAPES)), 3)
        print(json.dumps(result), flush=True)


class Pooling(torch.nn.Module):
    """How the classifier reads the encoder's tokens (--pool). A VLM's decoder reads them by attention, a
    softmax-weighted average; a CNN classifier by a channel-wise max. `attention` is one learned query."""

    def __init__(self, kind: str, width: int):
        super().__init__()
        self.kind, self.width = kind, 2 * width if kind == "meanmax" else width
        self.query = torch.nn.Parameter(torch.zeros(width)) if kind == "attention" else None

    def forward(self, tokens):
        if self.kind == "mean":
            return tokens.mean(1)
        if self.kind == "max":
            return tokens.amax(1)
        if self.kind == "attention":
            weights = torch.softmax(tokens @ self.query / tokens.shape[-1] ** 0.5, dim=1)
            return (weights[..., None] * tokens).sum(1)
        return torch.cat([tokens.mean(1), tokens.amax(1)], -1)


def run_supervised(args):
    """The reference a VLM should approach: the same encoder with a linear shape head on its pooled tokens,
    trained directly on shape labels (AdamW, lr 1e-3, batch 32, one-shape pictures never used by the probe)."""
    torch.manual_seed(0)
    model = build({"vision.patch_stem": args.stem})
    vision = model.vision
    probe = ShapeProbe(model.cfg.vision, n=args.n)
    # never the pairs the VLM's test holds out: an encoder saved here may start a VLM run (--save)
    images, shapes, colors = probe_pictures(model.cfg.vision, n=args.train_pictures, seed=1, all_pairs=False)
    pool = Pooling(args.pool, model.cfg.vision.width)
    head = torch.nn.Linear(pool.width, len(probe.shapes))
    color_head = torch.nn.Linear(pool.width, int(colors.max()) + 1)   # used with --colour
    optimizer = torch.optim.AdamW([*vision.parameters(), *pool.parameters(), *head.parameters(),
                                   *color_head.parameters()], lr=args.lr)
    rng = random.Random(0)
    start = time.time()
    for step in range(1, args.steps + 1):
        index = torch.tensor(rng.sample(range(len(images)), 32))
        tokens = vision(images[index])[:, 1:]
        pooled = pool(tokens)
        loss = F.cross_entropy(head(pooled), shapes[index])
        if args.colour:     # colour labels too: an encoder that keeps colour while it learns form
            loss = loss + F.cross_entropy(color_head(pooled), colors[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.probe_every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 3), "seconds": round(time.time() - start),
                              **{k: round(v, 3) for k, v in probe(model).items()}}), flush=True)
    if args.save:   # a VLM run can start from this encoder: --set vision_init=PATH --set vision.patch_stem=STEM
        from nanovlm.convert.vision_init import save_vision
        save_vision(model, args.save)
        print(f"wrote {args.save}")


def run_plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run, label in zip(args.runs, args.labels or args.runs):
        rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
        points = [(r["step"], r["probe_shape"]) for r in rows if "probe_shape" in r]
        ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.axhline(1 / 16, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel("linear probe: shape accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


def hadamard(n: int) -> np.ndarray:
    """Sylvester's n x n matrix of +-1 (n a power of two): its rows are mutually orthogonal codes."""
    h = np.ones((1, 1), dtype=np.int8)
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


SHAPE_ROW, COLOUR_ROW = 1, 20    # first Hadamard row of each code (row 0 is constant); the sixth round's runs


def oracle_picture(objects: list[dict], image_size: int = 64, patch: int = 8) -> np.ndarray:
    """(image_size, image_size, 3) uint8: black, with one coded patch per thing under its centre (the nearest
    free patch when two centres share one)."""
    cells, codes = image_size // patch, hadamard(patch * patch)
    picture, used = np.zeros((image_size, image_size, 3), np.uint8), set()
    for thing in objects:
        cx, cy = min(int(thing["x"] * cells), cells - 1), min(int(thing["y"] * cells), cells - 1)
        _, cx, cy = min((abs(i - cx) + abs(j - cy), i, j) for i in range(cells) for j in range(cells)
                        if (i, j) not in used)
        used.add((cx, cy))
        code = np.zeros((patch * patch, 3), np.uint8)
        code[:, 0] = 255 * (codes[SHAPE_ROW + ALL_SHAPES.index(thing["shape"])] > 0)
        code[:, 1] = 255 * (codes[COLOUR_ROW + ALL_COLORS.index(thing["color"])] > 0)
        code[:, 2] = 255
        picture[cy * patch:(cy + 1) * patch, cx * patch:(cx + 1) * patch] = code.reshape(patch, patch, 3)
    return picture


def run_oracle(args):
    from PIL import Image
    from nanovlm.data.format import RECORDS_FILE
    from nanovlm.progress import progress

    source, out = Path(args.data), Path(args.out)
    if not (source / RECORDS_FILE).is_file():
        raise ValueError(f"{source} has no {RECORDS_FILE}: give a folder written by `nanovlm data shapes`")
    if out.resolve() == source.resolve():
        raise ValueError("--out must not be the --data folder: the coded copy would replace its pictures")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)                                  # no stale pictures from an earlier, larger copy
    records = [json.loads(line) for line in open(source / RECORDS_FILE)]
    if not all(r.get("meta", {}).get("style") == "shapes" for r in records):
        raise ValueError(f"{source} is not a shapes dataset (records without meta.style = shapes)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for record in progress(records, desc="oracle", unit="picture"):
        Image.fromarray(oracle_picture(record["meta"]["objects"])).save(out / record["images"][0])
    shutil.copyfile(source / RECORDS_FILE, out / RECORDS_FILE)
    print(f"wrote {len(records)} coded pictures to {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="probe encoders as built")
    p.add_argument("--n", type=int, default=1200, help="probe pictures")
    p.add_argument("--efficientnet", help="converted EfficientNet-Lite0 safetensors (nanovlm convert efficientnet)")
    p.add_argument("--only", help="probe only the encoders whose name contains this")
    p.set_defaults(func=run_init)
    p = sub.add_parser("tokens", help="probe single tokens of the stems (scattering, ImageNet EfficientNet)")
    p.add_argument("--n", type=int, default=1200, help="probe pictures")
    p.add_argument("--efficientnet", help="converted EfficientNet-Lite0 safetensors, to probe it too")
    p.set_defaults(func=run_tokens)
    p = sub.add_parser("supervised", help="train the demo encoder as a plain shape classifier")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--train-pictures", type=int, default=4000)
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--stem", default="convnet", help="vision.patch_stem of the demo encoder")
    p.add_argument("--colour", action="store_true", help="train on colour labels as well as shape labels")
    p.add_argument("--pool", default="meanmax", choices=("meanmax", "mean", "max", "attention"),
                   help="how the head reads the tokens: mean and max (default), mean, max, or attention (a learned "
                   "query, as a decoder reads them)")
    p.add_argument("--save", help="write the trained encoder here (safetensors; a VLM run's vision_init)")
    p.set_defaults(func=run_supervised)
    p = sub.add_parser("plot", help="probe_shape vs step from training runs' metrics.jsonl")
    p.add_argument("runs", nargs="+")
    p.add_argument("--labels", nargs="*")
    p.add_argument("--out", default="benchmarks/form_probe.png")
    p.set_defaults(func=run_plot)
    p = sub.add_parser("oracle", help="a shapes dataset's copy with object-local coded pictures (64 px)")
    p.add_argument("--data", required=True, help="a folder written by `nanovlm data shapes` (64 px)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_oracle)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:   # a bad input: one line, exit 2, as nanovlm commands do
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
