"""Synthetic business documents with exact ground truth: KYC application forms, trade confirmations and account
statements, drawn with Pillow in several layouts, printed or hand-filled, signed or not, stamped, then "scanned".

    make_documents("data/docs", kinds=["kyc", "trade"], n=1000, styles=["fields", "checks"], seed=0)

A document is planned first (kinds.py: the values, from fields.py's generators, and any injected anomaly), then
laid out and drawn (layouts.py, render.py), then turned into records (records.py) in the one dataset format
(nanovlm.data.format). Each record's meta holds every field's value and its pixel box, the signature box, the
anomalies and the check answers, so a scorer or a test can verify anything the page shows.
"""
from __future__ import annotations

import io
import random
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ...config import ConfigError
from ..format import RECORDS_FILE, SPLITS, assign_split, write_records
from .kinds import KINDS, Document, plan_document
from .layouts import LAYOUTS, draw_page
from .records import READ_PROMPT, STYLES, masked_pages, texts_for
from .render import scan

DEFAULT_SIZE = (384, 256)   # width, height: a landscape slip, read as it is by the documents preset
MIN_SIZE = (256, 160)       # below this the fields no longer fit a line
# The documents preset's training recipe: nanovlm.train.PRESET_RECIPES["documents"].


def render_document(doc: Document, layout: str, width: int, height: int, rng: random.Random,
                    scan_strength: float = 1.0) -> tuple[bytes, dict]:
    """Draw and scan one document. Returns (JPEG bytes, meta) with every box in the scanned image's pixels."""
    canvas, boxes, rows, signature_box = draw_page(doc, layout, width, height, rng)
    flat = {f"field:{k}": v for k, v in boxes.items()}
    flat["signature"] = signature_box
    for i, row in enumerate(rows or []):
        flat.update({f"row:{i}:{col}": cell["box"] for col, cell in row.items() if cell["box"]})
    jpeg, moved = scan(canvas.image, flat, rng, strength=scan_strength)
    meta = {
        "kind": doc.kind, "layout": layout, "size": [width, height],
        "fields": doc.values,
        "boxes": {k: moved[f"field:{k}"] for k in boxes},
        "labels": {e.key: e.label for e in doc.entries},
        "date_field": doc.date_key, "date_format": doc.date_format,
        "hand_filled": doc.hand_filled,
        "signature": {"present": doc.signed, "box": moved["signature"]},
        "stamp": doc.stamp_words is not None,
        "anomalies": doc.anomalies, "checks": doc.checks,
    }
    if rows is not None:
        meta["transactions"] = [{col: {"value": cell["value"], "box": moved.get(f"row:{i}:{col}")}
                                 for col, cell in row.items()} for i, row in enumerate(rows)]
    return jpeg, meta


def _read_records(out: Path, doc: Document, jpeg: bytes, meta: dict, doc_id: str, split: str,
                  rng: random.Random) -> list[dict]:
    """The `read` curriculum records of one document, each with its own masked page (see masked_pages)."""
    page = Image.open(io.BytesIO(jpeg)).convert("RGB")
    records = []
    for key, masked in masked_pages(doc, page, meta["boxes"], rng):
        image = f"images/{doc_id}-{key}.jpg"
        masked.save(out / image, format="JPEG", quality=92)
        records.append({"id": f"{doc_id}-read-{key}", "images": [image],
                        "texts": [{"user": READ_PROMPT, "assistant": doc.values[key]}], "split": split,
                        "meta": {"document": doc_id, "style": "read", "kind": doc.kind, "layout": meta["layout"],
                                 "fields": {key: doc.values[key]}, "boxes": {key: meta["boxes"][key]},
                                 "questions": [{"key": key, "answer": doc.values[key]}]}})
    return records


def check_arguments(kinds, n: int, styles, layouts, width: int, height: int, split: str | None,
                    scan_strength: float = 1.0):
    """Every bad argument is one ConfigError naming it and the allowed values."""
    for name, given, allowed in (("kind", kinds, KINDS), ("style", styles, STYLES), ("layout", layouts, LAYOUTS)):
        if not given:
            raise ConfigError(f"no {name} given; choose from {', '.join(allowed)}")
        unknown = [g for g in given if g not in allowed]
        if unknown:
            raise ConfigError(f"unknown {name} {unknown[0]!r}; choose from {', '.join(allowed)}")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a whole number >= 1, got {n!r}")
    if width < MIN_SIZE[0] or height < MIN_SIZE[1] or width > 4096 or height > 4096:
        raise ConfigError(f"page size {width}x{height} is out of range: width {MIN_SIZE[0]}-4096 and height "
                          f"{MIN_SIZE[1]}-4096 pixels")
    if not 0.0 <= scan_strength <= 1.0:   # also rejects NaN
        raise ConfigError(f"scan strength must be between 0 (clean) and 1, got {scan_strength!r}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)} (or left out for an 80/10/10 split), got {split!r}")


def make_documents(out, kinds=KINDS, n: int = 1000, styles=("fields",), layouts=LAYOUTS, seed: int = 0,
                   width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], split: str | None = None,
                   scan_strength: float = 1.0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write `n` documents (kinds taken in turn) as JPEG scans under out/images/ and their records to
    out/records.jsonl: one record per document and style, all styles of a document sharing its image.

    layouts: the layouts to draw from (hold one out to test generalisation). split: put every record in that split
    (e.g. "test" for a held-out evaluation set); None hashes each document into train/val/test 80/10/10.
    Deterministic: the same arguments give byte-identical files. Returns stats for the CLI."""
    kinds, styles, layouts = list(kinds), list(styles), list(layouts)
    check_arguments(kinds, n, styles, layouts, width, height, split, scan_strength)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; choose another --out")
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass --overwrite")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    if overwrite:   # a smaller rerun must not leave pages of the larger one behind
        for kind in KINDS:
            for old in images.glob(f"{kind}-*.jpg"):
                old.unlink()

    digits = max(6, len(str(n - 1)))
    records, counts = [], {"kinds": {}, "splits": {s: 0 for s in SPLITS}, "anomalies": 0}
    start = time.perf_counter()
    for index in tqdm(range(n), desc="documents", unit="doc", disable=not progress):
        kind = kinds[index % len(kinds)]
        rng = random.Random(f"documents:{seed}:{index}")
        layout = rng.choice(layouts)
        doc = plan_document(kind, rng)
        jpeg, meta = render_document(doc, layout, width, height, rng, scan_strength)
        doc_id = f"{kind}-{index:0{digits}d}"
        image = f"images/{doc_id}.jpg"
        (out / image).write_bytes(jpeg)
        doc_split = split or assign_split(doc_id, seed)
        for style in styles:
            if style == "read":
                records.extend(_read_records(out, doc, jpeg, meta, doc_id, doc_split, rng))
                continue
            texts, truth = texts_for(doc, style, rng)
            records.append({"id": doc_id if len(styles) == 1 else f"{doc_id}-{style}", "images": [image],
                            "texts": texts, "split": doc_split,
                            "meta": {"document": doc_id, "style": style, **meta, **truth}})
        counts["kinds"][kind] = counts["kinds"].get(kind, 0) + 1
        counts["splits"][doc_split] += 1
        counts["anomalies"] += bool(doc.anomalies)
    write_records(out, records)
    seconds = time.perf_counter() - start
    return {"out": str(out), "n": n, "records": len(records), "seconds": round(seconds, 2),
            "documents_per_s": round(n / seconds, 1), **counts}


__all__ = ["KINDS", "LAYOUTS", "STYLES", "make_documents", "render_document", "plan_document"]
