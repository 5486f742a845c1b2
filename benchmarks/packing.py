"""Train-step time of the demo preset with and without packing (pack=true), on scenes VQA samples: the records as
made (4-6 questions per picture, ~80 tokens) and split into one question per sample (~30 tokens).

    python benchmarks/packing.py --scenes 2000 --steps 20 --threads 2

Packing puts several samples in one row of up to decoder.max_seq_len tokens with a block-diagonal causal mask, so
a batch carries less padding, but attention then runs with an explicit mask instead of the causal fast path.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from nanovlm.config import from_name
from nanovlm.data.format import read_records, write_records
from nanovlm.data.loader import VLMDataset, collate, collate_packed
from nanovlm.data.synth import make_scenes
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer
from nanovlm.train import TrainConfig, build_optimizer


def one_question_per_sample(folder: Path, out: Path) -> Path:
    records = read_records(folder)
    write_records(out, [{**r, "id": f"{r['id']}#{k}", "texts": [t]} for r in records for k, t in enumerate(r["texts"])])
    os.symlink((folder / "images").resolve(), out / "images")
    return out


def median_step(dataset: VLMDataset, cfg, tokenizer, pack: bool, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg)
    optimizer = build_optimizer(model, TrainConfig())
    times, padded = [], 0
    for step in range(steps + 1):   # step 0 warms up
        samples = [dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)]
        batch = (collate_packed(samples, tokenizer.pad_token_id, dataset.max_len) if pack
                 else collate(samples, tokenizer.pad_token_id))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(batch["input_ids"], batch["images"], labels=batch["labels"], return_logits=False,
                            segment_ids=batch.get("segment_ids"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
            padded += batch["input_ids"].numel()
    real = sum(len(s["input_ids"]) for s in samples)
    return {"ms": 1000 * sorted(times)[len(times) // 2], "tokens_per_batch": padded / steps, "real_tokens": real}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "vqa", n=args.scenes, style="vqa", progress=False)
        single = one_question_per_sample(tmp / "vqa", tmp / "single")
        records = read_records(tmp / "vqa")
        tokenizer = Tokenizer.train([t[k] for r in records for t in r["texts"] for k in ("user", "assistant")],
                                    vocab_size=1024)
        cfg = tokenizer.configure(from_name("demo"))
        print(f"demo preset, batch {args.batch_size}, {args.threads} threads, bf16 autocast, median of {args.steps} "
              "steps")
        print("| samples | pack | step ms | tokens per batch (padded) | speed-up |\n|---|---|---:|---:|---:|")
        for name, folder in (("multi-turn records", tmp / "vqa"), ("one question each", single)):
            dataset = VLMDataset(folder, tokenizer, cfg, split="train")
            plain = median_step(dataset, cfg, tokenizer, False, args.steps, args.batch_size)
            packed = median_step(dataset, cfg, tokenizer, True, args.steps, args.batch_size)
            for pack, r in ((False, plain), (True, packed)):
                print(f"| {name} | {pack} | {r['ms']:.1f} | {r['tokens_per_batch']:.0f} | "
                      f"{plain['ms'] / r['ms']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
