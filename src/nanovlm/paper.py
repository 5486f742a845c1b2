"""The NanoVLMs paper's sweep in one command: mini, base and large on the same data, the loss curves of the three
(Figure 6) and one report (parameters, steps, minutes, validation loss, grounding, ROUGE-1 novelty, Table 3).

    nanovlm paper --out runs/paper --minutes 30                    # scenes, short + long, 30 CPU-minutes per size
    nanovlm paper --out runs/paper --data data/coco-short --budget steps --steps 3000
    nanovlm paper --out runs/paper-patches --image-tokens patches  # control: every patch token, not ONE CLS token

Sizes get equal compute: with budget="time" each size trains for `minutes` (its step count measured first on a
few steps, so the learning-rate schedule still runs its full course); with budget="steps" each trains the same
number of steps. Scenes data by default: short and long descriptions of the same pictures in one training set,
the long ones asked for with their own question, so one model learns both and is scored on each. Run again in
the same folder after an interruption, the sweep reuses each size already trained with the same settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .chat import ChatSettings
from .config import ConfigError, from_name
from .data import format as fmt
from .data.synth import make_scenes
from .train import TrainConfig, train

LONG_QUESTION = "Describe the picture in detail."   # the long scenes' user turn: one model, two lengths
BUDGETS = ("time", "steps")
IMAGE_TOKENS = ("cls", "patches")


@dataclass
class PaperConfig:
    out: str = "runs/paper"
    sizes: list = field(default_factory=lambda: ["mini", "base", "large"])   # presets, trained in this order
    data: str | None = None          # a described dataset (`nanovlm data describe`); None -> scenes short + long
    n_scenes: int = 12000            # pictures drawn per style (scenes only)
    image_size: int = 64             # the paper's 224 costs ~10x more per step on a CPU; use it on a GPU
    budget: str = "time"             # time: equal minutes per size | steps: equal steps per size
    minutes: float = 30.0            # training minutes per size (budget=time)
    steps: int = 2000                # optimizer steps per size (budget=steps)
    calibration_steps: int = 10      # steps timed per size to turn minutes into steps (budget=time)
    batch_size: int = 32
    lr: float = 1e-3                 # the paper's learning rate, for the decoder
    lr_vision: float | None = 1e-4   # vision encoder and projector (see README: they need a lower rate); None = lr
    image_tokens: str = "cls"        # cls: the paper's ONE prefix token | patches: every patch token (the control)
    eval_samples: int = 300          # held-out samples per style for grounding, ROUGE and the judge
    max_new_tokens: int | None = None  # generation budget when evaluating; None: room for the longest reference
    judge: ChatSettings | None = None  # grade completions with an LLM (Table 3) when given
    seed: int = 0
    train_overrides: dict = field(default_factory=dict)   # TrainConfig fields and model keys, as --set gives them
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.budget not in BUDGETS:
            raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.image_tokens not in IMAGE_TOKENS:
            raise ConfigError(f"image_tokens must be one of {', '.join(IMAGE_TOKENS)}, got {self.image_tokens!r}")
        if not self.sizes or len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"sizes must be distinct presets, got {self.sizes}")
        for size in self.sizes:
            from_name(size)   # an unknown preset fails now, not after an hour of training
        if not self.minutes > 0 or self.steps < 1 or self.calibration_steps < 1 or self.eval_samples < 1:
            raise ConfigError("minutes must be > 0 and steps, calibration_steps, eval_samples >= 1")
        TrainConfig.from_options(dict(self.train_overrides), where="--set")   # unknown keys, bad values: now


# -----------------------------------------------------------------------------
# data

def prepare_scenes(cfg: PaperConfig, log=print) -> Path:
    """Short and long scenes of the same pictures, merged into OUT/data (reused when already drawn alike)."""
    data = Path(cfg.out) / "data"
    stamp = data / "paper_data.json"
    wanted = {"n": cfg.n_scenes, "image_size": cfg.image_size, "seed": cfg.seed}
    if (data / fmt.RECORDS_FILE).is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        log(f"reusing the scenes in {data}")
        return data
    merged = []
    for style in ("short", "long"):
        log(f"drawing {cfg.n_scenes} scenes with {style} descriptions ({cfg.image_size}px)")
        make_scenes(data / style, n=cfg.n_scenes, style=style, image_size=cfg.image_size, seed=cfg.seed,
                    progress=cfg.progress, overwrite=True)
        for record in fmt.read_records(data / style, check_images=False):
            # same picture, same id hash -> same split in both styles: no picture is trained on and tested on
            record["id"] = f"{style}-{record['id']}"
            record["images"] = [f"{style}/{path}" for path in record["images"]]
            if style == "long":
                record["texts"][0]["user"] = LONG_QUESTION
            merged.append(record)
    fmt.write_records(data, merged)
    stamp.write_text(json.dumps(wanted))
    return data


# -----------------------------------------------------------------------------
# training

def train_config(cfg: PaperConfig, size: str, data: Path, steps: int, out: Path, **changes) -> TrainConfig:
    """One size's training run: the sweep's settings, then --set options (typed by TrainConfig), then `changes`."""
    settings = {"preset": size, "data": str(data), "out": str(out), "steps": steps, "batch_size": cfg.batch_size,
                "lr": cfg.lr, "lr_vision": cfg.lr_vision, "lr_projector": cfg.lr_vision, "seed": cfg.seed,
                "warmup_steps": max(1, min(100, steps // 10)), "eval_every": max(1, steps // 10),
                # a flipped picture would name its objects right to left, against the descriptions' order
                "augment": False, "overwrite": True, "progress": cfg.progress,
                "projector.source": cfg.image_tokens}
    if from_name(size).vision.image_size != cfg.image_size:
        settings["vision.image_size"] = cfg.image_size
    return TrainConfig.from_options({**settings, **cfg.train_overrides, **changes}, where="paper")


def steps_for(cfg: PaperConfig, size: str, data: Path, log=print) -> tuple[int, float | None]:
    """(steps to train, measured seconds per step or None): equal steps, or as many as `minutes` allow."""
    if cfg.budget == "steps":
        return cfg.steps, None
    # Time the steps alone, from the training time the trainer logs after every step: steps 2..k+1 of a run that
    # validates only at its end. The first step (allocation, warm-up) and the closing validation and checkpoint
    # saves (seconds for a 25M model) would otherwise dominate a short run.
    k = cfg.calibration_steps
    out = Path(cfg.out) / "calibration" / size
    summary = train(train_config(cfg, size, data, k + 1, out, eval_every=k + 1, eval_batches=1, progress=False))
    elapsed = {r["step"]: r["elapsed_s"] for r in read_metrics(Path(summary["metrics"]))}
    seconds_per_step = max(elapsed[k + 1] - elapsed[1], 1e-3) / k
    steps = max(1, int(cfg.minutes * 60 / seconds_per_step))
    log(f"{size}: {seconds_per_step:.3f} s/step measured -> {steps} steps in {cfg.minutes:g} minutes")
    return steps, seconds_per_step


SWEEP_ROW = "sweep_row.json"   # a finished size's row and the settings it was trained with


def training_settings(cfg: PaperConfig, size: str, data: Path) -> dict:
    """What decides how a size trains: a finished size is reused only when all of it is the same."""
    ignored = ("out", "sizes", "eval_samples", "max_new_tokens", "judge", "overwrite", "progress")
    return {"size": size, "data": str(data.resolve()),
            **{k: v for k, v in asdict(cfg).items() if k not in ignored}}


def reusable_row(cfg: PaperConfig, size: str, data: Path) -> dict | None:
    """The row of `size` when an earlier, interrupted sweep in the same folder already trained it alike (a 90-minute
    sweep killed during `large` keeps `mini` and `base`), else None. A size finished with other settings is an
    error unless --overwrite; one that never finished is trained again."""
    out = Path(cfg.out) / size
    saved = finished_size(out)
    if saved is None or cfg.overwrite:
        return None
    settings = training_settings(cfg, size, data)
    if saved["settings"] != settings:
        changed = sorted(k for k in {*settings, *saved["settings"]} if settings.get(k) != saved["settings"].get(k))
        raise FileExistsError(f"{out} holds {size} trained with other settings ({', '.join(changed)}); "
                              f"choose another --out or pass --overwrite")
    return saved["row"]


def train_size(cfg: PaperConfig, size: str, data: Path, log=print) -> dict:
    """Train one size for its share of the budget; return its report row (also saved beside its run)."""
    out = Path(cfg.out) / size
    (out / SWEEP_ROW).unlink(missing_ok=True)   # trained anew below: an old row must not outlive its model
    steps, seconds_per_step = steps_for(cfg, size, data, log)
    log(f"training {size} for {steps} steps")
    summary = train(train_config(cfg, size, data, steps, out))
    row = {"preset": size, "steps": summary["steps"], "minutes": summary["train_time_s"] / 60,
           "val_loss": summary["best_val_loss"], "final_train_loss": summary["final_loss"],
           "calibrated_s_per_step": seconds_per_step, "model": summary["best"], "metrics": summary["metrics"]}
    (out / SWEEP_ROW).write_text(json.dumps({"settings": training_settings(cfg, size, data), "row": row}, indent=1))
    return row


def finished_size(out: Path) -> dict | None:
    """The saved row of a size the sweep finished in `out`, or None (never finished, its model gone, or the row
    unreadable: then it is trained again)."""
    try:
        saved = json.loads((out / SWEEP_ROW).read_text())
        return saved if Path(saved["row"]["model"]).is_dir() and isinstance(saved["settings"], dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_to_shrink_report(report: Path, sizes: list[str], reused: dict[str, dict | None]):
    """An earlier report may be rewritten only by a run that keeps every size it shows and adds one: `--sizes
    mini,large` after a finished mini sweep extends it; `--sizes large` alone, or the same sweep again, is refused."""
    if not report.exists():
        return
    try:
        shown = list(json.loads(report.read_text())["sizes"])
    except (OSError, ValueError, KeyError, TypeError):
        shown = []
    dropped = [size for size in shown if not reused.get(size)]
    why = ("unreadable" if not shown else f"this run would not keep {', '.join(dropped)}" if dropped else
           "it shows every size asked for" if set(sizes) <= set(shown) else None)
    if why:
        raise FileExistsError(f"{report} already exists ({why}); choose another --out or pass --overwrite")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Figure 6: training (smoothed) and validation loss of every size on one plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, history), color in zip(histories.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                                          "tab:purple", "tab:brown")):
        steps = [r["step"] for r in history if "loss" in r]
        losses = [r["loss"] for r in history if "loss" in r]
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color=color, label=f"{name} train")
        val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), color=color, linestyle="--", marker="o", markersize=3, label=f"{name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -----------------------------------------------------------------------------
# evaluation

def evaluate_size(cfg: PaperConfig, model_dir: str, data: Path, novelty, out: Path, log=print) -> dict:
    """Grounding per style (when the data has ground truth), ROUGE-1 novelty and, with a judge, Table 3."""
    from .evaluate import evaluate, write_report
    from .evaluate.judge import CRITERIA, LLMJudge
    from .evaluate.rouge import description_style, plot_histogram
    from .model.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(model_dir)
    test = fmt.read_records(data, split="test")
    by_style = {s: [r for r in test if description_style(r) == s][: cfg.eval_samples] for s in ("short", "long")}
    by_style = {s: records for s, records in by_style.items() if records}
    heldout = [r for records in by_style.values() for r in records]
    result = {"params": sum(p.numel() for p in model.parameters())}
    for style, records in by_style.items():
        scored = [r for r in records if r.get("meta", {}).get("objects")]
        if scored:
            grounding = evaluate(model, data, "grounding", records=scored, max_new_tokens=cfg.max_new_tokens,
                                 progress=cfg.progress)
            write_report(grounding, out / f"grounding_{style}.json")
            result[f"object_accuracy_{style}"] = grounding["summary"]["object_accuracy"]
    rouge = evaluate(model, data, novelty, records=heldout, max_new_tokens=cfg.max_new_tokens, progress=cfg.progress)
    write_report(rouge, out / "rouge.json")
    plot_histogram([s["score"]["rouge1"] for s in rouge["samples"]], out / "rouge_hist.png")
    result.update({k: rouge["summary"][k] for k in ("rouge1_mean", "rouge1_median", "share_above_0_5")})
    if cfg.judge is not None:
        judged = evaluate(model, data, LLMJudge(cfg.judge, progress=cfg.progress), records=heldout,
                          max_new_tokens=cfg.max_new_tokens, progress=cfg.progress)
        write_report(judged, out / "judge.json")
        result["table3"] = {k: judged["summary"][k] for k in (*CRITERIA, "total", "graded", "failed")}
    return result


# -----------------------------------------------------------------------------
# the sweep

def run_paper(cfg: PaperConfig, log=print) -> dict:
    from .evaluate.rouge import RougeNovelty

    out = Path(cfg.out)
    data = Path(cfg.data) if cfg.data else out / "data"
    if cfg.data and not (data / fmt.RECORDS_FILE).is_file():
        raise FileNotFoundError(f"{data / fmt.RECORDS_FILE} not found; make it with `nanovlm data describe`")
    # every refusal before any drawing or training
    reused = {size: reusable_row(cfg, size, data) for size in cfg.sizes}
    if not cfg.overwrite:
        refuse_to_shrink_report(out / "report.json", cfg.sizes, reused)
    if not cfg.data:
        data = prepare_scenes(cfg, log)
    rows, histories = {}, {}
    for size in cfg.sizes:
        if reused[size]:
            log(f"reusing {size}, trained by an earlier run of this sweep ({reused[size]['steps']} steps)")
        rows[size] = reused[size] or train_size(cfg, size, data, log)
        histories[size] = read_metrics(Path(rows[size]["metrics"]))
    plot_loss_curves(histories, out / "loss_curves.png")

    novelty = RougeNovelty.from_training_data(data)   # indexed once, shared by every size
    for size in cfg.sizes:
        log(f"evaluating {size}")
        rows[size].update(evaluate_size(cfg, rows[size]["model"], data, novelty, out / size, log))
    report = {"config": {**asdict(cfg), "judge": asdict(cfg.judge) if cfg.judge else None}, "data": str(data),
              "sizes": rows, "figure6": str(out / "loss_curves.png")}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(format_report(report))
    log(format_report(report))
    return report


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_report(report: dict) -> str:
    rows = report["sizes"]
    cfg = report["config"]
    lines = [f"# NanoVLMs sweep ({cfg['budget']} budget: "
             + (f"{cfg['minutes']:g} min per size" if cfg["budget"] == "time" else f"{cfg['steps']} steps per size")
             + f", {cfg['image_size']}px, image tokens: {cfg['image_tokens']}, data: {report['data']})", "",
             "| size | params | steps | minutes | val loss | object acc. short | object acc. long | ROUGE-1 mean "
             "| ROUGE-1 > 0.5 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        val = "n/a" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        rouge = "n/a" if r.get("rouge1_mean") is None else f"{r['rouge1_mean']:.3f}"
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['steps']} | {r['minutes']:.1f} | {val} | "
                     f"{_pct(r.get('object_accuracy_short'))} | {_pct(r.get('object_accuracy_long'))} | {rouge} | "
                     f"{_pct(r.get('share_above_0_5'))} |")
    judged = {name: r["table3"] for name, r in rows.items() if "table3" in r}
    if judged:
        from .evaluate.judge import table3_markdown

        lines += ["", f"Table 3 (judge: {cfg['judge']['model']})", "", table3_markdown(judged)]
    lines += ["", f"Figure 6 (loss curves): {report['figure6']}"]
    return "\n".join(lines) + "\n"
