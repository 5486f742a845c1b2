"""The main job, end to end on a CPU: scenes data -> train the demo preset -> grounding accuracy -> saved model.

    nanovlm demo --out runs/demo
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError
from .data.format import RECORDS_FILE
from .data.synth import make_scenes
from .evaluate import evaluate, grounding, write_report
from .model.vlm import VisionLanguageModel
from .train import TrainConfig, train


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    n_scenes: int = 48000           # ~4 epochs in 5000 steps; 12000 scenes (16 epochs) overfit: 29.8% vs 34.6%
    image_size: int = 64
    style: str = "short"
    steps: int = 5000
    batch_size: int = 32
    lr: float = 2e-3                # the decoder's
    # The vision encoder and projector learn only through the decoder's attention: their gradient is weak and noisy,
    # and Adam turns noise into full-size steps. At the decoder's 2e-3 their weights random-walked to 3x their
    # initial norm and grounding crawled (34.6% of objects right after 5000 steps); 7e-4 gave 74.6%, 3e-4 83.0%,
    # 1e-4 87.0% (300 held-out scenes, 1 thread each).
    lr_vision: float = 1e-4         # vision encoder and projector
    seed: int = 0
    eval_scenes: int = 500          # held-out scenes scored for grounding
    show: int = 5                   # completions printed
    overwrite: bool = False         # replace the data, run and model of an earlier demo in `out`
    train_overrides: dict = field(default_factory=dict)   # TrainConfig fields and model keys, as `--set` gives


    def __post_init__(self):
        for name in ("n_scenes", "steps", "batch_size", "eval_scenes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_scenes < 20:
            raise ConfigError(f"the demo needs at least 20 scenes to have train, val and test splits, got {self.n_scenes}")


def check_demo_outputs(cfg: DemoConfig, wanted: dict):
    """Everything the demo would replace, refused before anything is written (unless cfg.overwrite). Scenes an
    earlier demo drew with the same settings are reused, not replaced."""
    out = Path(cfg.out)
    data, stamp = out / "data", out / "data" / "demo_data.json"
    ours = stamp.is_file() and _read_json(stamp) == wanted
    taken = []
    if data.exists() and any(data.iterdir()) and not ours:
        taken.append(f"{data} holds another dataset")
    if (out / "run").exists():
        taken.append(f"{out / 'run'} holds a training run")
    if (out / "model").exists():
        taken.append(f"{out / 'model'} holds a model")
    if taken and not cfg.overwrite:
        raise FileExistsError(f"{'; '.join(taken)}: rerun with --overwrite to replace them, or choose another --out")
    return ours


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_demo(cfg: DemoConfig, log=print) -> dict:
    started = time.time()
    out = Path(cfg.out)
    data = out / "data"
    stamp = data / "demo_data.json"
    wanted = {"n": cfg.n_scenes, "style": cfg.style, "image_size": cfg.image_size, "seed": cfg.seed}
    settings = demo_train_settings(cfg, data, out)
    tcfg = TrainConfig.from_options({**settings, **cfg.train_overrides})   # --set wins over the demo's settings
    reuse = check_demo_outputs(cfg, wanted) and (data / RECORDS_FILE).is_file()
    if not reuse:
        log(f"[1/4] drawing {cfg.n_scenes} scenes ({cfg.style} descriptions, {cfg.image_size}px) into {data}")
        stats = make_scenes(data, n=cfg.n_scenes, style=cfg.style, image_size=cfg.image_size, seed=cfg.seed,
                            overwrite=True)
        stamp.write_text(json.dumps(wanted))
        log(f"      {stats['images_per_s']:.0f} images/s, splits {stats['splits']}")
    else:
        log(f"[1/4] reusing the scenes in {data}")

    log(f"[2/4] training the demo preset for {cfg.steps} steps (batch {cfg.batch_size}) on "
        f"{'CUDA' if _cuda() else 'CPU'}")
    summary = train(tcfg)
    log(f"      final train loss {summary['final_loss']:.3f}, best validation loss {summary['best_val_loss']:.3f}, "
        f"{summary['train_time_s']:.0f} s")

    log(f"[3/4] grounding: completing {cfg.eval_scenes} held-out descriptions from their first words")
    model = VisionLanguageModel.from_pretrained(summary["best"])
    result = evaluate(model, data, "grounding", split="test", limit=cfg.eval_scenes, batch_size=64)
    write_report(result, out / "grounding.json")   # + grounding.jsonl (per scene) and grounding.md
    log(grounding.format_table(result["summary"]))
    log("\n      a few completions (prompt in [brackets]):")
    for sample in result["samples"][: cfg.show]:
        start = sample["answer_start"]
        log(f"      {data / sample['images'][0]}\n        [{start}]{sample['answer'][len(start):]}")

    model.save_pretrained(out / "model")
    elapsed = time.time() - started
    log(f"[4/4] model saved to {out / 'model'}  (try: nanovlm generate --model {out / 'model'} "
        f"--image {data / result['samples'][0]['images'][0]} --prompt \"I see\")")
    log(f"      total time {elapsed / 60:.1f} min; report: {out / 'grounding.json'}")
    return {"summary": result["summary"], "train": summary, "elapsed_s": elapsed}


def demo_train_settings(cfg: DemoConfig, data: Path, out: Path) -> dict:
    return dict(preset="demo", data=str(data), out=str(out / "run"), steps=cfg.steps, batch_size=cfg.batch_size,
                lr=cfg.lr, lr_vision=cfg.lr_vision, lr_projector=cfg.lr_vision, seed=cfg.seed,
                warmup_steps=min(100, cfg.steps // 10), eval_every=max(cfg.steps // 8, 1), overwrite=cfg.overwrite,
                # No augmentation: a flipped picture would name its objects right to left, against the
                # fixed left-to-right order of the descriptions.
                augment=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
