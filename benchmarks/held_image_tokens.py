"""Training-step time with the image tokens rewritten by every decoder layer (the default) or held
(`--set decoder.hold_image_tokens=true`: read through their keys and values, never rewritten).

A bare loop over one preset's model (forward, backward, fused AdamW), fed the frozen encoder's outputs as a
`cache_vision=true` run is after its first epoch, so the step is the projector's and the decoder's. Random weights and
tokens: speed does not depend on them. Run it alone on the machine:

    python benchmarks/held_image_tokens.py --threads 2
    python benchmarks/held_image_tokens.py --preset documents --text 80 --batch-size 16
"""
from __future__ import annotations

import argparse
import statistics
import time


def step_time(preset: str, hold: bool, batch_size: int, text_tokens: int, steps: int) -> tuple[float, int]:
    """Median seconds per training step (after two warm-up steps) and the sequence length."""
    import torch

    from nanovlm.config import from_name
    from nanovlm.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    cfg = from_name(preset, {"decoder.hold_image_tokens": hold})
    cfg.image_token_id = cfg.decoder.vocab_size - 1
    model = VisionLanguageModel(cfg).train()
    model.vision.requires_grad_(False)
    n_image = cfg.image_tokens_per_image
    text = torch.randint(0, cfg.decoder.vocab_size - 3, (batch_size, text_tokens))
    ids = torch.cat([torch.full((batch_size, n_image), cfg.image_token_id), text], dim=1)
    labels = ids.roll(-1, dims=1)
    labels[:, :n_image] = -100
    features = torch.randn(batch_size, cfg.vision.num_patches, cfg.vision.width)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        _, loss = model(ids, labels=labels, vision_features=features, return_logits=False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]), ids.shape[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: demo-scattering, documents)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text", type=int, default=50, help="text tokens after the image tokens (default: 50)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (default: 10)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("batch_size", "text", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    import torch

    torch.set_num_threads(args.threads)
    print("| preset | batch x sequence | rewritten | held | speed-up |\n|---|---|---:|---:|---:|")
    for preset in args.preset or ["demo-scattering", "documents"]:
        rewritten, length = step_time(preset, False, args.batch_size, args.text, args.steps)
        held, _ = step_time(preset, True, args.batch_size, args.text, args.steps)
        print(f"| {preset} | {args.batch_size} x {length} | {rewritten * 1000:.0f} ms | {held * 1000:.0f} ms | "
              f"{rewritten / held:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
