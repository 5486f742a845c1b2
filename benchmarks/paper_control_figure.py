"""Figure 6 with the image-token control: the loss curves of two `nanovlm paper` sweeps on one plot.

    python benchmarks/paper_control_figure.py runs/paper runs/paper-patches benchmarks/paper_loss_curves_30min.png

Each sweep folder is one `nanovlm paper --out` (the first with ONE CLS token, the second with --image-tokens
patches); every size both sweeps trained is drawn, each CLS run followed by its patch-token control.
"""
import argparse
import json
from pathlib import Path

from nanovlm.paper import plot_loss_curves, read_metrics


def sweep_histories(folder: Path, label: str) -> dict[str, list[dict]]:
    report = json.loads((folder / "report.json").read_text())
    return {f"{size} {label}": read_metrics(folder / size / "metrics.jsonl") for size in report["sizes"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cls_sweep", type=Path)
    parser.add_argument("patch_sweep", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    cls, patches = sweep_histories(args.cls_sweep, "CLS"), sweep_histories(args.patch_sweep, "patches")
    paired = {}
    for name in cls:                      # mini CLS, mini patches, base CLS, ...
        paired[name] = cls[name]
        twin = name.replace(" CLS", " patches")
        if twin in patches:
            paired[twin] = patches[twin]
    print(plot_loss_curves(paired, args.png))


if __name__ == "__main__":
    main()
