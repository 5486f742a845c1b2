"""Import The Cauldron (HuggingFaceM4/the_cauldron) into the dataset format, streaming.

A Cauldron row is {"images": [{"bytes": ..., "path": ...}, ...], "texts": [{"user", "assistant", "source"}, ...]}.
It becomes one record with every image and every turn kept, in order:

    {"id": "ai2d-0000042", "images": ["images/3f9a0c....png", ...],
     "texts": [{"user": ..., "assistant": ...}, ...], "split": "train",
     "meta": {"source": "ai2d", "sources": [...only when the turns differ...], "file": "ai2d/train-0.parquet", "row": 42}}

- Streaming: parquet files are read one record batch at a time (pyarrow), records are written line by line to a
  temporary records.jsonl that replaces the old one at the end, so memory stays bounded by one batch however large
  the set is; `peak_rss_mb` in the returned stats says how much the process needed.
- Images are written once: the file name is the hash of the image bytes, so an image shared by many rows (or
  by several subsets) is stored once.
- A row whose turns all have an empty answer cannot be a record: it is skipped and counted (stats["skipped"]);
  empty-answer turns inside an otherwise good row are dropped and counted (stats["dropped_turns"]).
- A name that is not a local path (e.g. "HuggingFaceM4/the_cauldron:ai2d") is streamed from the Hugging Face Hub
  through `datasets` when it is installed and online; otherwise one clear error says so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image, UnidentifiedImageError
from ..progress import progress as show_progress
from .format import FIELDS, RECORDS_FILE, DatasetFormatError, assign_split, validate_record

COLUMNS = ("images", "texts")
BATCH_ROWS = 64                 # rows held in memory at once
HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")   # owner/dataset[:subset]
IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}


def parquet_files(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """FILES and DIRs -> parquet files (a folder contributes its *.parquet, recursively, in sorted order)."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(path.rglob("*.parquet"))
            if not found:
                raise DatasetFormatError(f"{path}: no .parquet files in this folder. Point --parquet at the "
                                         "Cauldron's parquet files or the folder holding them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such parquet file or folder")
    return files


def open_parquet(path: Path, columns: tuple[str, ...], what: str):
    """A pyarrow ParquetFile holding `columns`, or one clear error naming the file. Opened before any work starts,
    so a wrong file fails at once."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except Exception as e:   # pyarrow raises ArrowInvalid / OSError for files that are not parquet
        raise DatasetFormatError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in columns if c not in parquet.schema_arrow.names]
    if missing:
        raise DatasetFormatError(f"{path}: no column(s) {missing}; {what}, this one has {parquet.schema_arrow.names}")
    return parquet


def row_batches(parquet, columns: tuple[str, ...]) -> Iterator[list[dict]]:
    """The rows of one parquet file, BATCH_ROWS at a time. One row group is read at a time, without read-ahead
    (`iter_batches` buffered several groups: 3x the peak memory on 100 KB images), so memory is bounded by the
    largest row group."""
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=list(columns), use_threads=False)
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            yield batch.to_pylist()
        del table


def _open_hub(name: str):
    """Stream "owner/dataset[:subset]" from the Hub with `datasets`; one clear error when that cannot work."""
    repo, _, subset = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DatasetFormatError(f"{name}: not a local parquet file or folder, and reading it from the Hugging Face "
                                 "Hub needs the `datasets` package (pip install datasets) and a network "
                                 "connection. Or download the parquet files and pass them with --parquet") from None
    try:
        return datasets.load_dataset(repo, subset or None, split="train", streaming=True)
    except (ConnectionError, OSError, ValueError) as e:   # offline, unknown repo or subset
        raise DatasetFormatError(f"{name}: could not stream it from the Hugging Face Hub ({e}). Check the name "
                                 "and the network, or pass downloaded parquet files with --parquet") from None


def _hub_batches(stream) -> Iterator[list[dict]]:
    batch = []
    for row in stream:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


class ImageStore:
    """Writes each distinct image once, named by the hash of its bytes."""

    def __init__(self, out: Path):
        self.folder = out / "images"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.reused = 0

    def add(self, image, base: Path, where: str) -> str:
        data = image if isinstance(image, (bytes, bytearray)) else (image.get("bytes") if isinstance(image, dict)
                                                                     else None)
        if data is None and isinstance(image, dict) and isinstance(image.get("path"), str) and image["path"]:
            source = (base / image["path"]).resolve()   # a parquet that points at files next to it
            if not source.is_relative_to(base.resolve()):
                raise DatasetFormatError(f"{where}: image path {image['path']!r} leads outside {base}")
            if not source.is_file():
                raise DatasetFormatError(f"{where}: the image has no bytes and its path {source} does not exist. "
                                         "Use parquet files with embedded images")
            data = source.read_bytes()
        if not data:
            raise DatasetFormatError(f"{where}: an image entry with neither bytes nor a path: {image!r:.80}")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                kind = opened.format
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetFormatError(f"{where}: an image that is not a readable picture ({e})") from None
        digest = hashlib.sha256(data).hexdigest()[:24]
        relative = f"images/{digest}.{IMAGE_FORMATS.get(kind, 'img')}"
        target = self.folder.parent / relative
        if target.exists():
            self.reused += 1
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            self.written += 1
        return relative


def _record(row: dict, row_id: str, images: list[str], where: str, meta: dict) -> tuple[dict | None, int]:
    """(record, turns dropped); record None when no turn has an answer."""
    turns = row.get("texts") or []
    if not isinstance(turns, list):
        raise DatasetFormatError(f"{where}: 'texts' must be a list of {{user, assistant, source}}, got {turns!r:.80}")
    texts, sources = [], []
    for turn in turns:
        if not isinstance(turn, dict) or not all(isinstance(turn.get(k), (str, type(None)))
                                                 for k in ("user", "assistant", "source")):
            raise DatasetFormatError(f"{where}: every turn of 'texts' must be {{user, assistant, source}} strings, "
                                     f"got {turn!r:.80}")
        user, answer = (turn.get("user") or ""), (turn.get("assistant") or "")
        if answer.strip():
            texts.append({"user": user, "assistant": answer})
            sources.append(turn.get("source"))
    if not texts:
        return None, len(turns)
    known = [s for s in sources if s]
    if known:
        meta["source"] = known[0]
        if len(set(known)) > 1:
            meta["sources"] = sources
    return {"id": row_id, "images": images, "texts": texts, "meta": meta}, len(turns) - len(texts)


def import_cauldron(sources: list[str], out: str | os.PathLike, name: str | None = None, seed: int = 0,
                    val_fraction: float = 0.01, overwrite: bool = False, progress: bool = True) -> dict:
    """Convert Cauldron parquet files (or folders of them, or one Hub name) into a dataset folder `out`.

    name: the id prefix (default: the parquet folder's or file's name, e.g. "ai2d"). Splits are assigned by
    hashing each id: val_fraction to "val", the rest to "train". Returns stats: rows, records, skipped,
    dropped_turns, images, images_written, images_reused, seconds, peak_rss_mb.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetFormatError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    if (out / RECORDS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORDS_FILE} already exists; choose another folder or pass --overwrite")
    if not sources:
        raise DatasetFormatError("no parquet files given: pass --parquet FILES or a folder")
    if len(sources) == 1 and not Path(sources[0]).exists() and HUB_NAME.match(str(sources[0])):
        hub_name = str(sources[0])
        streams = [(Path(hub_name), Path("."), _hub_batches(_open_hub(hub_name)))]
        prefix = name or hub_name.rpartition(":")[2].rpartition("/")[2]
        total = None
    else:
        files = parquet_files(sources)
        opened = [open_parquet(f, COLUMNS, "a Cauldron file has 'images' (list of {bytes, path}) and 'texts' "
                               "(list of {user, assistant, source})") for f in files]
        streams = [(f, f.parent, row_batches(p, COLUMNS)) for f, p in zip(files, opened)]
        prefix = name or files[0].parent.name or files[0].stem
        total = sum(p.metadata.num_rows for p in opened)

    out.mkdir(parents=True, exist_ok=True)
    store = ImageStore(out)
    stats = {"rows": 0, "records": 0, "skipped": 0, "dropped_turns": 0}
    started = time.perf_counter()
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{RECORDS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f, \
                show_progress(total=total, desc="cauldron", unit="row", enabled=progress) as bar:
            for source, base, batches in streams:
                row_in_file = 0
                for batch in batches:
                    for row in batch:
                        where = f"{source} row {row_in_file}"
                        row_id = f"{prefix}-{stats['rows']:07d}"
                        images = [store.add(image, base, where) for image in (row.get("images") or [])]
                        record, dropped = _record(row, row_id, images, where,
                                                  {"file": source.name, "row": row_in_file})
                        stats["rows"] += 1
                        row_in_file += 1
                        stats["dropped_turns"] += dropped
                        if record is None:
                            stats["skipped"] += 1
                            continue
                        record["split"] = assign_split(row_id, seed, (1 - val_fraction, val_fraction, 0.0))
                        validate_record(record, where)
                        f.write(json.dumps({k: record[k] for k in FIELDS if k in record}, ensure_ascii=False) + "\n")
                        stats["records"] += 1
                    bar.update(len(batch))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / RECORDS_FILE)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    stats.update(images=store.written + store.reused, images_written=store.written, images_reused=store.reused,
                 seconds=round(time.perf_counter() - started, 2), peak_rss_mb=round(peak_rss_mb(), 1))
    return stats


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
