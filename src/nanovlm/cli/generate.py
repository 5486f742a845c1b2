"""nanovlm generate"""
from __future__ import annotations

from ..images import DEFAULT_MAX_PIXELS
from .common import add_command


def register(sub, groups):
    p = add_command(sub, "generate", "complete a description (or answer a question) about image(s)")
    p.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    p.add_argument("--image", required=True, action="append", help="image file; repeat for several")
    p.add_argument("--prompt", default="", help="the first words of the answer, e.g. \"There is\"")
    p.add_argument("--question", default="Describe the picture.", help="the user's question")
    p.add_argument("--max-new-tokens", type=int, default=80, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens with this mass")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this, checked from the header before decoding")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", help="run with bf16 weights (faster on CPUs with bf16)")
    p.set_defaults(func=run)


def run(args):
    import torch

    from ..devices import resolve_device, warn_if_bf16_is_slow
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel
    from ..predict import complete, open_image
    from ..sampling import GenerationConfig

    # bad options and bad images fail before the model loads
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    images = [open_image(path, max_pixels=args.max_pixels) for path in args.image]
    if args.bf16:
        warn_if_bf16_is_slow(resolve_device(args.device), "--bf16", "leave it out to run in fp32", memory_bound=True)
    model = VisionLanguageModel.from_pretrained(resolve_model_dir(args.model), device=args.device,
                                                dtype=torch.bfloat16 if args.bf16 else None)
    completions = complete(model, images, answer_starts=[args.prompt] * len(images),
                           questions=[args.question] * len(images), generation=generation)
    for path, text in zip(args.image, completions):
        prefix = f"{path}: " if len(args.image) > 1 else ""
        print(f"{prefix}{args.prompt}{text}")
