"""The paper's task, scored objectively: give the model each held-out scene and the first words of its
description, let it write the rest, and check the colours, shapes, counts and positions it names against the
scene's ground truth (`meta`)."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..data import format as fmt
from ..data.synth import split_opening
from ..model.vlm import VisionLanguageModel
from ..predict import complete
from . import grounding


def prompt_words(description: str, fallback_words: int = 3) -> str:
    """The opening the model is given: the scene generator's generic opening phrase (it names no attribute, not
    even a count, so "I see" and not "I see a"), or the first few words of any other description."""
    try:
        return split_opening(description)[0]
    except ValueError:
        return " ".join(description.split()[:fallback_words])


def evaluate_grounding(model: VisionLanguageModel, folder: str | Path, split: str = "test", limit: int | None = None,
                       batch_size: int = 64, max_new_tokens: int | None = None, progress: bool = True) -> dict:
    """Complete every description of the split; return {"summary": ..., "samples": [...]}."""
    records = [r for r in fmt.read_records(folder, split=split) if r.get("meta", {}).get("objects")]
    if not records:
        raise fmt.DatasetFormatError(f"{folder}: no {split} records with meta.objects to score; "
                                     f"make the data with `nanovlm data scenes`")
    records = records[:limit] if limit else records
    if max_new_tokens is None:   # room for the longest reference description, plus slack
        longest = max(len(model.tokenizer.encode(r["texts"][0]["assistant"])) for r in records)
        max_new_tokens = int(longest * 1.3) + 8
    samples = []
    bar = tqdm(total=len(records), desc="grounding", unit="scene", disable=not progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        starts = [prompt_words(r["texts"][0]["assistant"]) for r in chunk]
        images = [fmt.load_image(folder, r["images"][0]) for r in chunk]
        questions = [r["texts"][0]["user"] for r in chunk]
        completions = complete(model, images, answer_starts=starts, questions=questions,
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
        for record, opening, completion in zip(chunk, starts, completions):
            text = opening + ("" if completion[:1].isspace() else " ") + completion
            samples.append({"id": record["id"], "image": str(Path(folder) / record["images"][0]), "prompt": opening,
                            "generated": text, "reference": record["texts"][0]["assistant"],
                            "score": grounding.score_description(text, record["meta"])})
        bar.update(len(chunk))
    bar.close()
    return {"summary": grounding.summarize([s["score"] for s in samples]), "samples": samples}


def write_report(result: dict, path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
