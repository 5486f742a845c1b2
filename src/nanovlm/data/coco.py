"""Import COCO captions (captions_train2017.json / captions_val2017.json + an image folder) into the dataset format.

One record per image that has at least one caption:
    {"id": "coco-391895", "images": ["images/000000391895.jpg"],
     "texts": [{"user": "Describe the picture.", "assistant": <first caption>}],
     "split": "train" | "val" | "test", "meta": {"coco_id": 391895, "captions": [<all captions>]}}
"First" means first in the annotations file's order. Captions have their whitespace normalised.

Choices for imperfect inputs (each is counted in the returned stats):
- an annotation whose image_id is not in "images" is skipped with a warning: subsets made by filtering "images"
  often keep stray annotations, and refusing the whole import over them helps nobody;
- an image without captions is skipped (a record needs a text);
- an image file missing on disk is an error by default (a silently smaller dataset hides a wrong folder);
  missing_images="skip" drops those images with a warning instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path, PurePosixPath

from ..progress import progress as progress_bar
from .format import DESCRIBE_PROMPT, RECORDS_FILE, DatasetFormatError, assign_split, write_records


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: annotations file not found. Point it at COCO's captions JSON, "
                                 "e.g. annotations/captions_val2017.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                                 "Download the captions file again; it may be truncated") from None
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{path}: not UTF-8 text. Is this really a COCO captions JSON file?") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f'{path}: not a COCO captions file: expected an object with lists "images" and '
                                 '"annotations". Use captions_*.json, not instances_*.json or a records.jsonl')
    return data


def _check_entries(path: Path, data: dict) -> None:
    """Every image needs an id and a relative file_name; every annotation an image_id and a caption string."""
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), (int, str)) \
                or not isinstance(image.get("file_name"), str):
            raise DatasetFormatError(f'{path}: images[{i}] needs an "id" (number) and a "file_name", got '
                                     f"{image!r:.100}. Fix or remove that entry")
        parts = PurePosixPath(image["file_name"]).parts
        if not parts or image["file_name"].startswith("/") or ".." in parts:
            raise DatasetFormatError(f'{path}: images[{i}] file_name {image["file_name"]!r} must be a path inside '
                                     "the image folder. Fix that entry")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DatasetFormatError(f'{path}: annotations[{i}] needs "image_id" and a string "caption", got '
                                     f"{ann!r:.100}. Fix or remove that entry")


def _captions_by_image(path: Path, data: dict) -> tuple[dict, dict]:
    """image id -> image entry, image id -> captions in file order; warns about annotations of unknown images."""
    images = {}
    for i, image in enumerate(data["images"]):
        if image["id"] in images:
            raise DatasetFormatError(f"{path}: images[{i}] repeats image id {image['id']!r}. Image ids must be unique")
        images[image["id"]] = image
    captions, unknown = {}, []
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            unknown.append(ann["image_id"])
            continue
        caption = " ".join(ann["caption"].split())
        if caption:
            captions.setdefault(ann["image_id"], []).append(caption)
    if unknown:
        warnings.warn(f"{path}: skipped {len(unknown)} annotation(s) whose image_id is not in \"images\" "
                      f"(e.g. {unknown[:3]})", stacklevel=3)
    return images, captions


def _test_slice(image_ids: list, seed: int, test_size: int) -> set:
    # order by a seeded hash, not by id, so the held-out slice is a fair sample that never moves between runs
    def rank(image_id):
        return hashlib.sha256(f"coco-test/{seed}/{image_id}".encode()).digest()
    return set(sorted(image_ids, key=rank)[:test_size])


def _place_image(source: Path, target: Path, image_mode: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if image_mode == "copy":
        shutil.copyfile(source, target)
    else:   # a link keeps a 19 GB train2017 folder from being duplicated; the dataset then depends on it
        os.symlink(source.resolve(), target)


def import_coco(annotations_json, images_dir, out, seed: int = 0, val_fraction: float = 0.1, test_size: int = 500,
                image_mode: str = "copy", missing_images: str = "error", progress: bool = True,
                overwrite: bool = False) -> dict:
    """Convert a COCO captions file and its image folder into a dataset folder `out`.

    Splits: a held-out "test" slice of `test_size` images (seeded hash order), then the rest split
    train/val by hashing each image id with `val_fraction` (0.1 = the usual 90/10).
    image_mode: "copy" (self-contained dataset) or "symlink" (no copy; absolute links into images_dir).
    missing_images: "error" (default) or "skip".
    Returns stats: images, captions, skipped_annotations, images_without_captions, missing_images, splits, seconds.
    """
    if image_mode not in ("copy", "symlink"):
        raise ValueError(f'image_mode must be "copy" or "symlink", got {image_mode!r}')
    if missing_images not in ("error", "skip"):
        raise ValueError(f'missing_images must be "error" or "skip", got {missing_images!r}')
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    start = time.perf_counter()
    path, images_dir, out = Path(annotations_json), Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise DatasetFormatError(f"{images_dir}: image folder not found. Point it at the folder holding the "
                                 "COCO images, e.g. val2017/")
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass overwrite=True "
                              "(--overwrite)")

    data = _load_json(path)
    _check_entries(path, data)
    images, captions = _captions_by_image(path, data)
    n_skipped = sum(1 for ann in data["annotations"] if ann["image_id"] not in images)
    with_captions = [image_id for image_id in images if image_id in captions]

    missing = [image_id for image_id in with_captions if not (images_dir / images[image_id]["file_name"]).is_file()]
    if missing and missing_images == "error":
        examples = ", ".join(str(images_dir / images[i]["file_name"]) for i in missing[:3])
        raise DatasetFormatError(f"{images_dir}: {len(missing)} of {len(with_captions)} captioned images are "
                                 f"missing (e.g. {examples}). Check that the image folder matches {path.name}, "
                                 'or pass missing_images="skip" to leave them out')
    if missing:
        warnings.warn(f"{images_dir}: skipped {len(missing)} missing image(s)", stacklevel=2)
    keep = sorted(set(with_captions) - set(missing), key=lambda i: (isinstance(i, str), i))
    if not keep:
        raise DatasetFormatError(f"{path}: no image has both a caption and a file in {images_dir}. "
                                 "Check that the annotations and the image folder belong together")
    if not 0 <= test_size < len(keep):
        raise ValueError(f"test_size={test_size} must be at least 0 and less than the {len(keep)} usable images")

    test_ids = _test_slice(keep, seed, test_size)
    records, splits = [], {"train": 0, "val": 0, "test": 0}
    for image_id in progress_bar(keep, desc="coco", unit="img", enabled=progress):
        file_name = images[image_id]["file_name"]
        _place_image(images_dir / file_name, out / "images" / file_name, image_mode)
        split = "test" if image_id in test_ids else assign_split(f"coco-{image_id}", seed,
                                                                  (1.0 - val_fraction, val_fraction, 0.0))
        splits[split] += 1
        records.append({"id": f"coco-{image_id}", "images": [f"images/{file_name}"],
                        "texts": [{"user": DESCRIBE_PROMPT, "assistant": captions[image_id][0]}],
                        "split": split, "meta": {"coco_id": image_id, "captions": captions[image_id]}})
    write_records(out, records)
    return {"out": str(out), "images": len(records), "captions": sum(len(captions[i]) for i in keep),
            "skipped_annotations": n_skipped, "images_without_captions": len(images) - len(with_captions),
            "missing_images": len(missing), "splits": splits, "seconds": round(time.perf_counter() - start, 3)}
