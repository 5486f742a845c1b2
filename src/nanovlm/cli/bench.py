"""nanovlm bench PRESET"""
from __future__ import annotations

from .common import add_command, add_json, print_json


DTYPE_CHOICES = ("auto", "fp32", "bf16")   # nanovlm.bench.DTYPE_CHOICES, without importing torch for --help


def register(sub, groups):
    p = add_command(sub, "bench", "measure train-step time, tokens/s, decode tokens/s and peak memory "
                    "(random weights)")
    p.add_argument("preset", nargs="?", default="nanovlm-222m", help="preset to measure")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=2, help="train-step batch size")
    p.add_argument("--text-len", type=int, default=128, help="text tokens per training sample")
    p.add_argument("--prompt-len", type=int, default=20, help="text tokens in the decode prompt")
    p.add_argument("--new-tokens", type=int, default=50, help="tokens to decode (0 = skip decoding)")
    p.add_argument("--train-dtype", choices=DTYPE_CHOICES, default="auto",
                   help="autocast dtype for training (auto: bf16 where its matrix products are faster than fp32's, else fp32)")
    p.add_argument("--decode-dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weight dtype for decoding (auto: bf16 on GPUs and on CPUs with bf16 instructions, else fp32)")
    p.add_argument("--steps", type=int, default=3, help="timed train steps after one warm-up (0 = skip training)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    add_json(p)
    p.set_defaults(func=run)


def run(args):
    from ..bench import format_results, run_benchmark

    results = run_benchmark(args.preset, threads=args.threads, batch_size=args.batch_size, text_len=args.text_len,
                            prompt_len=args.prompt_len, new_tokens=args.new_tokens, train_dtype=args.train_dtype,
                            decode_dtype=args.decode_dtype, steps=args.steps, device=args.device,
                            compile=args.compile)
    print_json(results) if args.json else print(format_results(results))
