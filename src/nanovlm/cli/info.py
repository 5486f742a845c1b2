"""nanovlm info PRESET"""
from __future__ import annotations

from .common import add_command, add_set_option, parse_set_pairs


def register(sub, groups):
    from ..config import PRESETS

    p = add_command(sub, "info", "parameter count and per-module share of a preset (vs the paper's Table 2)")
    p.add_argument("preset", help=f"preset name: {', '.join(PRESETS)}")
    add_set_option(p, "override a model key, e.g. decoder.n_layer=4")
    p.set_defaults(func=run)


def run(args):
    from ..info import describe_preset

    print(describe_preset(args.preset, overrides=parse_set_pairs(args.set)))
