"""`nanovlm bench`: how fast a preset trains and decodes on this machine, with random weights.

Measures, for one preset:
- a training step (forward + backward + fused AdamW step, fp32 master weights, bf16 autocast by default) on a
  batch of samples made of one image and `text_len` text tokens each (the image placeholder tokens come on top),
  with the loss on every text position and the model called with return_logits=False, as training does;
- greedy decoding at batch 1 after one image + `prompt_len` prompt tokens (EOS disabled, so every token is
  generated), with the weights in `decode_dtype`, and the prefill time alone;
- the peak memory of each phase (CPU: peak RSS; CUDA: torch.cuda.max_memory_allocated).

Progress goes to stderr; format_results() makes the table printed on stdout. Timings are wall-clock: on a shared
machine, look at the best as well as the median.
"""
from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time

import torch

from .config import ConfigError, from_name
from .devices import resolve_device, resolve_precision, resolve_weight_dtype

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)   # auto: bf16 where it is fast, else fp32 (devices.resolve_precision, resolve_weight_dtype)


def _log(message: str):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _check_dtype(name: str, value: str) -> str:
    if value not in DTYPE_CHOICES:
        raise ConfigError(f"{name} must be one of {', '.join(DTYPE_CHOICES)}; got {value!r}")
    return value


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    # ru_maxrss is the peak of the whole process. On Linux, writing 5 to clear_refs resets that high-water mark
    # to the current RSS, so each phase reports its own peak; elsewhere the number is the process peak so far.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the operating system.

    A training step allocates and frees about a gigabyte of large tensors (activations, the bf16 copies of the
    weights autocast makes, gradients). glibc serves large blocks with mmap and unmaps them when freed, so every
    step takes ~220k page faults (each a zero-filled 4 KiB page) to get the memory back: 0.3-0.7 s of a 2.5 s
    nanovlm-222m step on 2 cores. Turning off mmap for large blocks and trimming of the heap makes freed blocks
    reusable, at the price of the process keeping its peak memory. (jemalloc or tcmalloc through LD_PRELOAD solve
    the same problem.) Returns False, changing nothing, where the C library is not glibc."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                          # from glibc's <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def build_config(preset: str):
    """The preset, with special-token ids set as a tokenizer would set them (the last ids of the vocabulary)."""
    cfg = from_name(preset)
    vocab = cfg.decoder.vocab_size
    cfg.image_token_id, cfg.eos_token_id, cfg.pad_token_id = vocab - 1, vocab - 2, vocab - 3
    return cfg


def _build_model(cfg, device: torch.device):
    from .model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    with torch.device(device):
        return VisionLanguageModel(cfg)


def _sample(cfg, batch_size: int, text_len: int, device: torch.device, generator: torch.Generator):
    """input_ids (B, image tokens + text_len) with the image placeholders first, and one random image each."""
    n_image_tokens = cfg.image_tokens_per_image
    # random text ids below the special ids at the end of the vocabulary
    text = torch.randint(0, cfg.decoder.vocab_size - 3, (batch_size, text_len), generator=generator)
    ids = torch.cat([torch.full((batch_size, n_image_tokens), cfg.image_token_id), text], dim=1)
    images = torch.randn(batch_size, 3, cfg.vision.height, cfg.vision.image_size, generator=generator)
    return ids.to(device), images.to(device)


def bench_train(cfg, device, batch_size: int, text_len: int, dtype: torch.dtype, steps: int, compile: bool) -> dict:
    """The trainer's own optimizer (fused AdamW, per-module groups) and step (autocast, clipping) on a fixed batch."""
    import itertools

    from .train import Runtime, TrainConfig, build_optimizer, train_step

    model = _build_model(cfg, device).train()
    tcfg = TrainConfig(precision="bf16" if dtype == torch.bfloat16 else "fp32", batch_size=batch_size, lr=1e-4)
    optimizer = build_optimizer(model, tcfg)
    step_model = torch.compile(model) if compile else model
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    ids, images = _sample(cfg, batch_size, text_len, device, generator)
    # Loss on every text position (the description task); the image positions take none, as in training.
    labels = ids.roll(-1, dims=1)
    labels[:, : cfg.image_tokens_per_image] = -100
    labels[:, -1] = -100
    batches = itertools.repeat({"input_ids": ids, "labels": labels, "images": images})
    runtime = Runtime(device=device)

    def step():
        return train_step(step_model, optimizer, scaler, batches, tcfg, runtime)[0]

    _reset_peak_memory(device)
    times = []
    for i in range(steps + 1):               # step 0 is the warm-up (allocations, autotuning, compilation)
        _sync(device)
        start = time.perf_counter()
        loss = step()
        _sync(device)
        elapsed = time.perf_counter() - start
        _log(f"train step {i}{' (warm-up)' if i == 0 else ''}: {elapsed:.3f} s, loss {loss:.3f}")
        if i > 0:
            times.append(elapsed)
    peak = _peak_memory_mb(device)
    tokens_per_step = ids.numel()
    median, best = statistics.median(times), min(times)
    flops = count_flops(step)
    return {"train_step_s": median, "train_step_best_s": best, "train_tokens_per_step": tokens_per_step,
            "train_tokens_per_s": tokens_per_step / median, "train_samples_per_s": batch_size / median,
            "train_peak_mb": peak, "train_flops_per_step": flops,
            "train_flops_per_s": flops / median if flops is not None else None}


def count_flops(fn) -> int | None:
    """FLOPs of the matrix products, convolutions and attention in one call of fn (forward + backward), as
    counted by torch's FlopCounterMode; elementwise work is not counted, so this is the useful-work rate.
    None where torch cannot count an operator: its formula for CUDA's fused attention kernels asserts that
    keys and values have as many heads as the queries, which grouped-query attention (SmolLM2) does not."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            fn()
    except AssertionError as e:
        _log(f"FLOPs not counted: {e}")
        return None
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, max_size: int = 2048,
                      repeats: int = 10) -> tuple[float, int]:
    """What this machine's matrix multiply reaches on a large square product, the ceiling to compare with:
    (FLOP/s, the product's size).
    The size doubles from 256 while one product takes under 20 ms, up to max_size: where the dtype is slow (bf16
    on a CPU without bf16 instructions: ~1 GFLOP/s) a 2048 product would take 10+ seconds for the same answer."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b                                           # warm-up
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if size >= max_size or time.perf_counter() - start > 0.02:
            break
        size *= 2
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start), size


@torch.inference_mode()
def bench_decode(cfg, device, prompt_len: int, new_tokens: int, dtype: torch.dtype, compile: bool,
                 repeats: int = 3) -> dict:
    model = _build_model(cfg, device).eval().to(dtype)
    if compile:
        # generate() calls the decoder once per token; compiling it (not generate's Python loop) is what counts.
        model.decoder.compile()
    generator = torch.Generator().manual_seed(1)
    ids, images = _sample(cfg, 1, prompt_len, device, generator)
    images = images.to(dtype)
    packed = model.pack_inference_weights()      # once, as a server does: bf16 weights in oneDNN's layout ({} on GPU)

    def timed(max_new_tokens: int) -> float:
        _sync(device)
        start = time.perf_counter()
        out = model.generate(ids, images, max_new_tokens=max_new_tokens, eos_token_id=-1,   # -1: never stops
                             packed_weights=packed)
        _sync(device)
        assert out.shape == (1, max_new_tokens)
        return time.perf_counter() - start

    _reset_peak_memory(device)
    timed(new_tokens)                        # warm-up, full length so that torch.compile sees every shape
    # Prefill = encode the image, run the prompt through the decoder, pick the first token.
    prefill = [timed(1) for _ in range(repeats)]
    total = [timed(new_tokens) for _ in range(repeats)]
    peak = _peak_memory_mb(device)
    prefill_s, total_s = statistics.median(prefill), statistics.median(total)
    # The tokens after the first come from the decode loop alone: time them without the prefill.
    decode_s, decode_best_s = max(total_s - prefill_s, 1e-9), max(min(total) - min(prefill), 1e-9)
    steps = max(new_tokens - 1, 1)
    _log(f"decode: prefill {prefill_s * 1e3:.1f} ms, {new_tokens} tokens in {total_s:.3f} s "
         f"(runs: {', '.join(f'{t:.3f}' for t in total)})")
    return {"prefill_s": prefill_s, "decode_total_s": total_s, "decode_tokens_per_s": steps / decode_s,
            "decode_best_tokens_per_s": steps / decode_best_s, "decode_e2e_tokens_per_s": new_tokens / total_s,
            "decode_peak_mb": peak}


def run_benchmark(preset: str, threads: int = 2, batch_size: int = 2, text_len: int = 128, prompt_len: int = 20,
                  new_tokens: int = 50, train_dtype: str = "auto", decode_dtype: str = "auto", steps: int = 3,
                  device: str = "auto", compile: bool = False, reuse_memory: bool = True) -> dict:
    """Benchmark one preset with random weights; returns a flat dict of settings and measurements (seconds,
    tokens/s, MiB). Set train steps=0 or new_tokens=0 to skip a phase. reuse_memory calls keep_freed_memory()
    before the training phase (CPU only; it stays in effect for the rest of the process)."""
    from .model.vlm import VisionLanguageModel

    for name, value in (("threads", threads), ("batch_size", batch_size), ("text_len", text_len),
                        ("prompt_len", prompt_len)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if steps < 0 or new_tokens < 0:
        raise ConfigError("steps and new_tokens must be >= 0")
    dev = resolve_device(device)
    # training autocast follows the measured product speed; decoding one sequence is memory-bound, so its weights
    # follow the bytes read
    train_dtype = resolve_precision(_check_dtype("train_dtype", train_dtype), dev)
    decode_dtype = resolve_weight_dtype(_check_dtype("decode_dtype", decode_dtype), dev)
    train_torch_dtype, decode_torch_dtype = DTYPES[train_dtype], DTYPES[decode_dtype]
    torch.set_num_threads(threads)
    cfg = build_config(preset)
    for phase, length in (("train", cfg.image_tokens_per_image + text_len),
                          ("decode", cfg.image_tokens_per_image + prompt_len + new_tokens)):
        if cfg.decoder.position_embedding == "learned" and length > cfg.decoder.max_seq_len:
            raise ConfigError(f"{phase}: {length} tokens do not fit {preset}'s decoder.max_seq_len "
                              f"{cfg.decoder.max_seq_len}; use a smaller --text-len / --prompt-len / --new-tokens")
    with torch.device("meta"):
        params = VisionLanguageModel(cfg).num_parameters()
    results = {"preset": preset, "device": str(dev), "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "parameters": params["total"],
               "batch_size": batch_size, "text_len": text_len, "image_tokens": cfg.image_tokens_per_image,
               "prompt_len": prompt_len, "new_tokens": new_tokens, "train_dtype": train_dtype,
               "decode_dtype": decode_dtype, "steps": steps, "compile": compile, "malloc_keeps_freed_memory": False}
    _log(f"{preset}: {params['total'] / 1e6:.1f}M parameters on {dev}, {results['threads']} threads")
    # Decode first: its model is smaller (no gradients, no optimizer state), so its peak is not hidden by the
    # training peak where the peak RSS cannot be reset.
    if new_tokens > 0:
        _log(f"decode: batch 1, {prompt_len} prompt tokens + image, {new_tokens} new tokens, {decode_dtype} weights")
        results.update(bench_decode(cfg, dev, prompt_len, new_tokens, decode_torch_dtype, compile))
    if steps > 0:
        # Only now: decoding gains nothing from it, and its peak RSS would count the freed fp32 weights.
        results["malloc_keeps_freed_memory"] = keep_freed_memory() if reuse_memory and dev.type == "cpu" else False
        _log(f"train: batch {batch_size} x ({cfg.image_tokens_per_image} image + {text_len} text tokens), "
             f"{train_dtype} autocast, AdamW, 1 warm-up + {steps} timed steps")
        results.update(bench_train(cfg, dev, batch_size, text_len, train_torch_dtype, steps, compile))
        results["matmul_peak_flops_per_s"], results["matmul_peak_size"] = matmul_peak_flops(dev, train_torch_dtype)
    return results


def format_results(results: dict) -> str:
    r = results
    lines = [
        f"nanovlm bench: {r['preset']} ({r['parameters'] / 1e6:.1f}M parameters), device {r['device']}, "
        f"{r['threads']} threads ({r['cpu_count']} CPUs), torch {r['torch']}"
        + (", torch.compile" if r["compile"] else "")
        + (", malloc keeps freed memory" if r.get("malloc_keeps_freed_memory") else ""),
        "",
        f"{'measurement':<34}{'value':>12}  unit",
    ]

    def row(name, value, unit, fmt="{:.3f}"):
        lines.append(f"{name:<34}{fmt.format(value):>12}  {unit}")

    if "train_step_s" in r:
        lines.append(f"train: batch {r['batch_size']} x ({r['image_tokens']} image + {r['text_len']} text tokens), "
                     f"{'fp32' if r['train_dtype'] == 'fp32' else r['train_dtype'] + ' autocast'}, fp32 AdamW")
        row("  step time (median)", r["train_step_s"], "s")
        row("  step time (best)", r["train_step_best_s"], "s")
        row("  tokens/s", r["train_tokens_per_s"], "tokens/s", "{:.0f}")
        row("  samples/s", r["train_samples_per_s"], "samples/s", "{:.2f}")
        if r["train_flops_per_step"] is not None:
            row("  model FLOPs per step", r["train_flops_per_step"] / 1e9, "GFLOP", "{:.1f}")
            row("  achieved", r["train_flops_per_s"] / 1e9, "GFLOP/s", "{:.1f}")
        row(f"  {r['train_dtype']} matmul peak ({r['matmul_peak_size']}^3)", r["matmul_peak_flops_per_s"] / 1e9, "GFLOP/s", "{:.1f}")
        if r["train_flops_per_step"] is not None:
            row("  share of matmul peak", 100 * r["train_flops_per_s"] / r["matmul_peak_flops_per_s"], "%", "{:.0f}")
        row("  peak memory", r["train_peak_mb"], "MiB", "{:.0f}")
    if "decode_tokens_per_s" in r:
        lines.append(f"decode: batch 1, image + {r['prompt_len']} prompt tokens, {r['new_tokens']} new tokens, "
                     f"{r['decode_dtype']} weights, greedy")
        row("  prefill (image + prompt)", r["prefill_s"] * 1e3, "ms", "{:.1f}")
        row("  decode tokens/s (median)", r["decode_tokens_per_s"], "tokens/s", "{:.1f}")
        row("  decode tokens/s (best)", r["decode_best_tokens_per_s"], "tokens/s", "{:.1f}")
        row("  end-to-end tokens/s", r["decode_e2e_tokens_per_s"], "tokens/s", "{:.1f}")
        row("  peak memory", r["decode_peak_mb"], "MiB", "{:.0f}")
    return "\n".join(lines)
