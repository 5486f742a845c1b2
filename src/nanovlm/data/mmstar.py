"""Import MMStar (Lin-Chen/MMStar, 1,500 multiple-choice questions) from its parquet into the dataset format.

An MMStar row is {"index", "question" (the options inline: "...\\nOptions: A: ..., B: ..., C: ..., D: ..."),
"image" ({bytes, path} or raw bytes), "answer" ("A".."D"), "category", "l2_category"}. It becomes

    {"id": "mmstar-0042", "images": ["images/<hash>.jpg"],
     "texts": [{"user": <question as given>, "assistant": "B"}], "split": "test",
     "meta": {"index": 42, "answer": "B", "category": "coarse perception", "l2_category": "image scene and topic"}}

The evaluation protocol (post-prompt, letter extraction, averages) lives in nanovlm.evaluate.mmstar.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import time
from pathlib import Path

from ..progress import progress as show_progress
from .cauldron import ImageStore, open_parquet, parquet_files, peak_rss_mb, row_batches
from .format import FIELDS, RECORDS_FILE, DatasetFormatError, validate_record

COLUMNS = ("index", "question", "image", "answer", "category", "l2_category")
LETTERS = ("A", "B", "C", "D")


def _image_entry(value, where: str) -> dict:
    """MMStar ships the image as an Image feature ({bytes, path}); older dumps as raw or base64 bytes."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        try:
            return {"bytes": base64.b64decode(value, validate=True), "path": None}
        except (binascii.Error, ValueError):
            pass
    raise DatasetFormatError(f"{where}: 'image' must be image bytes or {{bytes, path}}, got {type(value).__name__}")


def mmstar_record(row: dict, image: str, where: str) -> dict:
    answer = str(row.get("answer", "")).strip().upper()
    if answer not in LETTERS:
        raise DatasetFormatError(f"{where}: answer {row.get('answer')!r} is not one of A, B, C, D")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetFormatError(f"{where}: empty question")
    index = row["index"]
    return {"id": f"mmstar-{int(index):04d}" if str(index).isdigit() else f"mmstar-{index}", "images": [image],
            "texts": [{"user": question, "assistant": answer}], "split": "test",
            "meta": {"index": index, "answer": answer, "category": str(row.get("category") or ""),
                     "l2_category": str(row.get("l2_category") or "")}}


def import_mmstar(sources: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Convert MMStar parquet file(s) into a dataset folder (every record in split "test"). Returns stats."""
    out = Path(out)
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass --overwrite")
    files = parquet_files(sources)
    opened = [open_parquet(f, COLUMNS, f"an MMStar file has {list(COLUMNS)}") for f in files]
    out.mkdir(parents=True, exist_ok=True)
    store = ImageStore(out)
    started, seen, n = time.perf_counter(), set(), 0
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{RECORDS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f, \
                show_progress(total=sum(p.metadata.num_rows for p in opened), desc="mmstar", unit="question",
                              enabled=progress) as bar:
            for path, parquet in zip(files, opened):
                row_in_file = 0
                for batch in row_batches(parquet, COLUMNS):
                    for row in batch:
                        where = f"{path} row {row_in_file}"
                        row_in_file += 1
                        image = store.add(_image_entry(row["image"], where), path.parent, where)
                        record = validate_record(mmstar_record(row, image, where), where)
                        if record["id"] in seen:
                            raise DatasetFormatError(f"{where}: index {row['index']} appears twice")
                        seen.add(record["id"])
                        f.write(json.dumps({k: record[k] for k in FIELDS if k in record}, ensure_ascii=False) + "\n")
                        n += 1
                        bar.update(1)
        os.replace(tmp, out / RECORDS_FILE)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"records": n, "images_written": store.written, "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1)}
