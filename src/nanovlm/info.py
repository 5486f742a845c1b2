"""`nanovlm info`: what a preset is made of, next to the paper's Table 2."""
from __future__ import annotations

import torch

from .config import PAPER_TABLE2, from_name


def describe_preset(name: str, overrides: dict | None = None) -> str:
    from .model.vlm import VisionLanguageModel

    cfg = from_name(name)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    with torch.device("meta"):          # count parameters without allocating them
        counts = VisionLanguageModel(cfg).num_parameters()
    total = counts["total"]
    paper = PAPER_TABLE2.get(name)
    v, d = cfg.vision, cfg.decoder
    lines = [
        f"preset {name}: {total / 1e6:.2f}M parameters" + (f" (paper: ~{paper['params'] / 1e6:.0f}M)" if paper else ""),
        f"  vision    {v.patch_stem} stem, {v.n_layer} blocks x {v.width} wide, {v.n_head} heads, "
        f"{v.describe_size()} / patch {v.patch_size}, CLS={v.use_cls}",
        f"  projector {cfg.projector.kind} on {cfg.projector.source} -> {cfg.image_tokens_per_image} image token(s)",
        f"  decoder   {d.flavour}: {d.n_layer} layers x {d.n_embd} wide, {d.n_head} heads ({d.n_kv_head} kv) "
        f"x {d.head_dim}, vocab {d.vocab_size}",
        "",
        f"  {'module':<10}{'params':>12}{'share':>9}" + (f"{'paper':>9}" if paper else ""),
    ]
    for module in ("vision", "projector", "decoder"):
        row = f"  {module:<10}{counts[module]:>12,}{counts[module] / total:>9.1%}"
        if paper:
            row += f"{paper[module]:>9.0%}"
        lines.append(row)
    lines.append(f"  {'total':<10}{total:>12,}{1:>9.1%}")
    return "\n".join(lines)
