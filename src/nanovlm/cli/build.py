"""nanovlm build"""
from __future__ import annotations

from pathlib import Path

from .common import add_command, add_json, add_overwrite, add_set_option, parse_set_pairs, print_json

LANGUAGE_HELP = ("pretrained language model: a Hugging Face Llama folder (config.json + safetensors + "
                 "tokenizer.json), a llama-architecture .gguf file, or a Hub repo id")
VISION_HELP = ("pretrained SigLIP vision encoder: a Hugging Face folder or Hub repo id; without it the preset's "
               "vision encoder starts fresh")


def register(sub, groups):
    p = add_command(sub, "build", "a ready model folder from pretrained backbones (vision encoder + LM)",
                    description="Assemble a vision-language model from a pretrained language model and, optionally, "
                                "a pretrained vision encoder; the projector starts fresh (train it with `nanovlm "
                                "train --language ... --vision ...`). Writes config.json, model.safetensors, "
                                "tokenizer.json, tokenizer_config.json (chat template) and README.md (model card).")
    p.add_argument("--language", required=True, help=LANGUAGE_HELP)
    p.add_argument("--vision", help=VISION_HELP)
    p.add_argument("--preset", default="nanovlm-222m", help="preset for the parts that start fresh (the projector, "
                   "and the vision encoder without --vision)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weight dtype of the saved model")
    add_overwrite(p, "a model folder already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json(p)
    add_set_option(p, "model key for the parts that start fresh (projector.output_norm=true, fusion=prefix, "
                      "vision.n_layer=4 without --vision)")
    p.set_defaults(func=run)


def run(args):
    import torch

    from ..convert.backbones import build_vlm

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace the model in it")
    model = build_vlm(args.language, args.vision, preset=args.preset, overrides=parse_set_pairs(args.set),
                      dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32, show_progress=not args.quiet)
    model.save_pretrained(out)
    params = model.num_parameters()
    summary = {"out": str(out), "parameters": params, "vocab_size": model.cfg.decoder.vocab_size,
               "image_token_id": model.cfg.image_token_id, "fusion": model.cfg.fusion}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {out}: {params['total'] / 1e6:.1f}M parameters (vision {params['vision'] / 1e6:.1f}M, "
              f"projector {params['projector'] / 1e6:.2f}M fresh, decoder {params['decoder'] / 1e6:.1f}M), "
              f"{model.cfg.decoder.vocab_size} tokens, {model.cfg.fusion} prompt format")
