"""The one on-disk dataset format. Every source (scenes, COCO, Cauldron, MMStar) converts into it.

A dataset is a folder holding `records.jsonl` (one JSON object per line) and the image files those records name,
with paths relative to the folder. One record:

    {"id": "scene-000123", "images": ["images/scene-000123.png"],
     "texts": [{"user": "Describe the picture.", "assistant": "I see a big red ball on the left. ..."}],
     "split": "train", "meta": {"background": "grass", "objects": [...]}}

- id      str, required, unique within the folder
- images  list of relative paths, required (may be empty for text-only records)
- texts   non-empty list of {"user": str, "assistant": str} turns
- split   optional, "train" | "val" | "test"; a record without one counts as "train"
- meta    optional dict of ground truth for evaluation (free-form, must be JSON)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from PIL import Image

from ..images import DEFAULT_MAX_PIXELS, ImageError, open_image

RECORDS_FILE = "records.jsonl"
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "train"  # unlabelled records are training data
REQUIRED_FIELDS = ("id", "images", "texts")
OPTIONAL_FIELDS = ("split", "meta")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
DESCRIBE_PROMPT = "Describe the picture."   # the user turn of description records (scenes, COCO captions)


class DatasetFormatError(ValueError):
    """A dataset file breaks the format. The message names the file (and line) and says how to fix it."""


def _fail(where: str, problem: str, fix: str) -> DatasetFormatError:
    return DatasetFormatError(f"{where}: {problem}. {fix}")


# -----------------------------------------------------------------------------
# one record

def _check_relative_path(path, where: str) -> None:
    if not isinstance(path, str) or not path:
        raise _fail(where, f"image path {path!r} is not a non-empty string",
                    'Write image paths as strings relative to the dataset folder, e.g. "images/0001.png"')
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":") or ".." in parts:
        # absolute or escaping paths would make a dataset folder impossible to move or share
        raise _fail(where, f"image path {path!r} is not inside the dataset folder",
                    "Copy the image into the folder and name it relative to the folder, without '..'")


def _check_texts(texts, where: str) -> None:
    fix = 'Write texts as a non-empty list of {"user": "...", "assistant": "..."} objects'
    if not isinstance(texts, list) or not texts:
        raise _fail(where, f'"texts" must be a non-empty list, got {texts!r:.60}', fix)
    for i, turn in enumerate(texts):
        if not isinstance(turn, dict) or set(turn) != {"user", "assistant"}:
            raise _fail(where, f'texts[{i}] must have exactly the keys "user" and "assistant", got {turn!r:.80}', fix)
        for key in ("user", "assistant"):
            if not isinstance(turn[key], str):
                raise _fail(where, f'texts[{i}]["{key}"] must be a string, got {type(turn[key]).__name__}', fix)
        if not turn["assistant"].strip():
            raise _fail(where, f'texts[{i}]["assistant"] is empty', "Give every turn an answer, or drop the turn")


def validate_record(obj, where: str) -> dict:
    """Check one record against the format and return it unchanged.

    `where` names the record for the error message, e.g. "data/records.jsonl line 7".
    Raises DatasetFormatError on an unknown or missing field or a value of the wrong type.
    """
    if not isinstance(obj, dict):
        raise _fail(where, f"a record must be a JSON object, got {type(obj).__name__}",
                    'Write one object per line: {"id": ..., "images": [...], "texts": [...]}')
    unknown = [key for key in obj if key not in FIELDS]
    if unknown:
        raise _fail(where, f"unknown field {unknown[0]!r}",
                    f"Allowed fields are {', '.join(FIELDS)}; put anything else inside \"meta\"")
    missing = [key for key in REQUIRED_FIELDS if key not in obj]
    if missing:
        raise _fail(where, f"missing field {missing[0]!r}", f"Every record needs {', '.join(REQUIRED_FIELDS)}")
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise _fail(where, f'"id" must be a non-empty string, got {obj["id"]!r}', 'Give each record a unique string id')
    if not isinstance(obj["images"], list):
        raise _fail(where, f'"images" must be a list, got {type(obj["images"]).__name__}',
                    'Write "images": [] for a text-only record')
    for path in obj["images"]:
        _check_relative_path(path, where)
    _check_texts(obj["texts"], where)
    if "split" in obj and obj["split"] not in SPLITS:
        raise _fail(where, f'"split" is {obj["split"]!r}', f"Use one of {', '.join(SPLITS)}, or leave it out (= train)")
    if "meta" in obj and not isinstance(obj["meta"], dict):
        raise _fail(where, f'"meta" must be an object, got {type(obj["meta"]).__name__}',
                    'Wrap the values: "meta": {...}')
    return obj


# -----------------------------------------------------------------------------
# a whole folder

def read_records(folder, split: str | None = None, check_images: bool = True,
                 max_images: int | None = None) -> list[dict]:
    """Read and validate `folder/records.jsonl`; return the records of `split` (all records when None).

    Blank lines are skipped. Ids must be unique across the whole file. With check_images, every image named by a
    returned record must exist. max_images: the most images one record may hold (the model's cfg.max_images).
    Any problem raises DatasetFormatError naming the file and the 1-based line.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(str(folder), "dataset folder not found",
                    "Check the path, or create a dataset first (e.g. `nanovlm data scenes --out DIR`)")
    path = folder / RECORDS_FILE
    if not path.is_file():
        raise _fail(str(path), f"no {RECORDS_FILE} in the dataset folder",
                    f"A dataset folder needs a {RECORDS_FILE} with one JSON record per line")

    records, line_of_id = [], {}
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            where = f"{path} line {line_number}"
            # decode per line so that a bad byte is reported with its line number
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _fail(where, "not valid UTF-8", "Save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(where, f"not valid JSON ({e.msg} at column {e.colno})",
                            "Each line must hold one complete JSON object") from None
            validate_record(obj, where)
            if obj["id"] in line_of_id:
                raise _fail(where, f"duplicate id {obj['id']!r} (first used on line {line_of_id[obj['id']]})",
                            "Give every record a unique id")
            line_of_id[obj["id"]] = line_number
            if split is not None and obj.get("split", DEFAULT_SPLIT) != split:
                continue
            if max_images is not None and len(obj["images"]) > max_images:
                raise _fail(where, f"record {obj['id']!r} has {len(obj['images'])} images but the model takes at "
                                   f"most {max_images} per record (max_images)",
                            "Split the record into one record per image, or use a model with a larger max_images")
            if check_images:
                for image in obj["images"]:
                    if not (folder / image).is_file():
                        raise _fail(where, f"image file {folder / image} not found",
                                    "Put the image there, fix the path, or drop the record")
            records.append(obj)
    return records


def _canonical(record: dict) -> dict:
    # a fixed field order keeps files diff-able and byte-identical for identical inputs
    return {key: record[key] for key in FIELDS if key in record}


def write_records(folder, records) -> Path:
    """Validate `records` and write them to `folder/records.jsonl` atomically; return the file's path.

    The folder is created if needed. The file appears complete or not at all (tmp file + os.replace), so a crash
    never leaves a half-written dataset. Image files are not checked here: write them before or after.
    """
    folder = Path(folder)
    path = folder / RECORDS_FILE
    lines, seen = [], set()
    for i, record in enumerate(records, start=1):
        where = f"{path} (record {i})"
        validate_record(record, where)
        if record["id"] in seen:
            raise _fail(where, f"duplicate id {record['id']!r}", "Give every record a unique id")
        seen.add(record["id"])
        try:
            lines.append(json.dumps(_canonical(record), ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise _fail(where, f"not JSON-serialisable ({e})",
                        "Keep meta to strings, numbers, lists and dicts") from None

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{RECORDS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_image(folder, relpath: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_size: int | None = None) -> Image.Image:
    """Open `folder/relpath` as an RGB PIL image with nanovlm.images.open_image (pixel cap checked before
    decoding, real range of 16-bit and float images, transparency composited onto white; min_size: reduce big
    images while decoding, keeping the shorter side >= min_size).

    A missing, unreadable or corrupt file raises DatasetFormatError naming the file.
    """
    try:
        return open_image(Path(folder) / relpath, max_pixels=max_pixels, min_size=min_size)
    except ImageError as e:
        raise DatasetFormatError(str(e)) from None


def assign_split(key: str, seed: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """Deterministically put `key` into "train", "val" or "test" with the given fractions.

    Hash-based rather than shuffle-based, so a record keeps its split when the dataset grows or is re-imported,
    and the same key and seed give the same split on every machine.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {fractions}")
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return split
    return next(s for s, f in reversed(list(zip(SPLITS, fractions))) if f > 0)  # u rounding past the last edge
