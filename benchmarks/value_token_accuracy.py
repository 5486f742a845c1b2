"""Does a documents model read? The teacher-forced accuracy of its next token inside field values.

    python benchmarks/value_token_accuracy.py runs/docs/last data/docs --style fields --n 48

For the first N held-out (val) records of a style, one forward pass over (page, question, true answer); each
answer token that lies inside a field value counts as right when it is the model's top next token. Reported per
field, for digits (only the picture predicts them: chance is 10%) and for other characters (names, months and
JSON keys are partly predicted by the text itself). Free-running generation (`nanovlm eval fields`) can only be
as good as this; this moves earlier, so it shows whether training is on its way.
"""
from __future__ import annotations

import argparse
import json

import torch

from nanovlm.data.format import load_image, read_records
from nanovlm.data.transforms import to_tensor
from nanovlm.evaluate.fields import value_spans
from nanovlm.model.vlm import VisionLanguageModel


def value_token_accuracy(model, data: str, style: str, n: int) -> dict[str, float]:
    tokenizer = model.tokenizer
    records = [r for r in read_records(data, split="val") if r.get("meta", {}).get("style") == style][:n]
    if not records:
        raise SystemExit(f"no val records of style {style!r} in {data}")
    right, total = {}, {}
    for record in records:
        question, answer = record["texts"][0]["user"], record["texts"][0]["assistant"]
        ids, mask = tokenizer.encode_conversation([{"user": question, "assistant": answer}],
                                                  model.cfg.image_tokens_per_image, fusion=model.cfg.fusion)
        first, answer_ids = mask.index(True), tokenizer.encode(answer)
        pixels = to_tensor(load_image(data, record["images"][0]), model.cfg.vision)[None]
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids]), pixels)
        predicted = logits[0, first - 1:first - 1 + len(answer_ids)].argmax(-1).tolist()
        ends = [len(tokenizer.decode(answer_ids[:i + 1])) for i in range(len(answer_ids))]
        starts = [0] + ends[:-1]
        key = record["meta"].get("questions", [{}])[0].get("key", "value")
        for field, (lo, hi) in (value_spans(answer) or {key: (0, len(answer))}).items():
            for guess, token, start, end in zip(predicted, answer_ids, starts, ends):
                if lo <= start < hi:
                    kind = "digits" if tokenizer.decode([token]).strip().isdigit() else "other"
                    for name in (field, kind, "all"):
                        right[name] = right.get(name, 0) + (guess == token)
                        total[name] = total.get(name, 0) + 1
    return {name: round(right[name] / total[name], 3) for name in sorted(total)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (a run's best or last)")
    parser.add_argument("data", help="documents dataset folder")
    parser.add_argument("--style", default="fields", help="record style: fields, qa or read (default: fields)")
    parser.add_argument("--n", type=int, default=48, help="val records to score (default: 48)")
    args = parser.parse_args()
    model = VisionLanguageModel.from_pretrained(args.model).eval()
    print(json.dumps({"model": args.model, "style": args.style, "n": args.n,
                      "accuracy": value_token_accuracy(model, args.data, args.style, args.n)}))


if __name__ == "__main__":
    main()
