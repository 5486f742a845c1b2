"""Training-step time with a frozen vision encoder, with and without cache_vision=true.

Runs `nanovlm.train.train` twice on the same small scenes-VQA set (the EfficientNet-Lite0 recipe of the README's
"Visual question answering" section, random stem weights: speed does not depend on them), and reports the mean
step time over the last steps, when every picture's output is in the cache. Run it alone on the machine:

    python benchmarks/vision_cache.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RECIPE = {"vision.patch_stem": "efficientnet_lite0", "vision.n_layer": 0, "vision.use_cls": False,
          "vision.image_size": 64, "vision.patch_size": 8, "vision.position": "sincos",
          "projector.shuffle_factor": 1, "decoder.qk_norm": 10.0}


def mean_step_time(run: Path, last: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = rows[-last - 1:]
    return (timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]) / (len(timed) - 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=800, help="scenes drawn (80%% train)")
    parser.add_argument("--steps", type=int, default=250, help="steps per run")
    parser.add_argument("--timed", type=int, default=100, help="last steps averaged")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.timed < args.steps:
        parser.error("--timed must be >= 1 and fewer than --steps")

    from nanovlm.data.synth import make_scenes
    from nanovlm.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "vqa"
        make_scenes(data, n=args.scenes, style="vqa", image_size=64, seed=0, progress=False)
        results = {}
        for cache in (False, True):
            run = Path(tmp) / f"cache-{cache}"
            train(TrainConfig(preset="demo", data=str(data), out=str(run), steps=args.steps,
                              batch_size=args.batch_size, model=dict(RECIPE), freeze=["vision"],
                              cache_vision=cache, eval_every=args.steps, eval_batches=1, threads=args.threads,
                              progress=False))
            results[cache] = mean_step_time(run, args.timed)
    plain, cached = results[False], results[True]
    print(f"frozen EfficientNet-Lite0 at 64 px, demo decoder, batch {args.batch_size}, {args.threads} threads, "
          f"mean of the last {args.timed} of {args.steps} steps:")
    print(f"  pictures decoded and encoded at every step: {plain * 1000:.0f} ms/step")
    print(f"  cache_vision=true (outputs kept):            {cached * 1000:.0f} ms/step ({plain / cached:.2f}x)")


if __name__ == "__main__":
    main()
