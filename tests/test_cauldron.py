"""The Cauldron import on a 2,000-row fixture written here in the Cauldron's exact parquet schema."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nanovlm.data.cauldron import import_cauldron
from nanovlm.data.format import DatasetFormatError, load_image, read_records

SCHEMA = pa.schema([
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))),
])
N_DISTINCT_IMAGES = 37


def picture(k: int) -> bytes:
    """One of N_DISTINCT_IMAGES small pictures, JPEG or PNG."""
    image = Image.new("RGB", (24 + k % 5, 20), ((k * 53) % 256, (k * 97) % 256, (k * 11) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if k % 2 else "JPEG")
    return buffer.getvalue()


def fixture_rows(n: int, start: int = 0) -> list[dict]:
    """Rows with 0-3 images and 1-3 turns; image k of row i is picture((i + k) % N_DISTINCT_IMAGES)."""
    rows = []
    for i in range(start, start + n):
        images = [{"bytes": picture((i + k) % N_DISTINCT_IMAGES), "path": f"img_{i}_{k}.png"} for k in range(i % 4)]
        texts = [{"user": f"Question {t} about row {i}?", "assistant": f"Answer {t} of row {i}.",
                  "source": "vqav2" if t < 2 else "ai2d"} for t in range(1 + i % 3)]
        rows.append({"images": images, "texts": texts})
    return rows


def write_parquet(path, rows, row_group_size=256):
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def cauldron(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cauldron") / "mixed"
    folder.mkdir()
    write_parquet(folder / "train-00000-of-00002.parquet", fixture_rows(1200))
    write_parquet(folder / "train-00001-of-00002.parquet", fixture_rows(800, start=1200))
    return folder


def test_two_thousand_rows_convert_one_to_one(cauldron, tmp_path):
    out = tmp_path / "out"
    stats = import_cauldron([cauldron], out, progress=False)
    assert stats["rows"] == stats["records"] == 2000 and stats["skipped"] == 0 and stats["dropped_turns"] == 0
    assert stats["peak_rss_mb"] > 0
    records = read_records(out)   # validates every record and that every image exists
    assert len(records) == 2000 and len({r["id"] for r in records}) == 2000
    expected = fixture_rows(2000)
    for i in (0, 1, 2, 3, 5, 1199, 1200, 1999):   # both files, every image and turn count
        record, row = records[i], expected[i]
        assert record["id"] == f"mixed-{i:07d}"
        assert record["texts"] == [{"user": t["user"], "assistant": t["assistant"]} for t in row["texts"]]
        assert len(record["images"]) == len(row["images"])
        for path, image in zip(record["images"], row["images"]):
            assert (out / path).read_bytes() == image["bytes"]   # stored as given, not re-encoded
        assert record["meta"]["source"] == "vqav2"
        assert record["meta"].get("sources") == ([t["source"] for t in row["texts"]] if len(row["texts"]) == 3
                                                 else None)
        assert record["meta"]["row"] == i - (1200 if i >= 1200 else 0)
    # images written once: every distinct picture is one file
    assert len(list((out / "images").iterdir())) == N_DISTINCT_IMAGES == stats["images_written"]
    assert stats["images"] == sum(len(r["images"]) for r in expected)
    assert {p.suffix for p in (out / "images").iterdir()} == {".png", ".jpg"}
    assert load_image(out, records[3]["images"][2]).size == (24 + 5 % 5, 20)
    assert {r["split"] for r in records} == {"train", "val"}


def test_existing_output_needs_overwrite_and_rows_without_answers_are_counted(tmp_path):
    rows = fixture_rows(10)
    rows[4]["texts"] = [{"user": "Q?", "assistant": " ", "source": "x"}]                 # nothing to learn
    rows[5]["texts"].append({"user": "Q2?", "assistant": "", "source": "x"})              # one empty turn
    write_parquet(tmp_path / "a.parquet", rows)
    stats = import_cauldron([tmp_path / "a.parquet"], tmp_path / "out", name="tiny", progress=False)
    assert (stats["rows"], stats["records"], stats["skipped"], stats["dropped_turns"]) == (10, 9, 1, 2)
    assert len(read_records(tmp_path / "out")[4]["texts"]) == 3   # row 5: its empty turn dropped
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_cauldron([tmp_path / "a.parquet"], tmp_path / "out", progress=False)
    assert import_cauldron([tmp_path / "a.parquet"], tmp_path / "out", overwrite=True, progress=False)["records"] == 9


def test_bad_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such parquet file or folder"):
        import_cauldron([tmp_path / "missing.parquet"], tmp_path / "o1", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no .parquet files"):
        import_cauldron([tmp_path / "empty"], tmp_path / "o2", progress=False)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DatasetFormatError, match="not a readable parquet file"):
        import_cauldron([tmp_path / "junk.parquet"], tmp_path / "o3", progress=False)
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetFormatError, match=r"no column\(s\) \['images', 'texts'\]"):
        import_cauldron([tmp_path / "other.parquet"], tmp_path / "o4", progress=False)
    rows = fixture_rows(3)
    rows[2]["images"] = [{"bytes": b"not an image", "path": None}]
    write_parquet(tmp_path / "bad_image.parquet", rows)
    with pytest.raises(DatasetFormatError, match="bad_image.parquet row 2: an image that is not a readable picture"):
        import_cauldron([tmp_path / "bad_image.parquet"], tmp_path / "o5", progress=False)
    assert not (tmp_path / "o5" / "records.jsonl").exists()   # nothing half-written
    with pytest.raises(DatasetFormatError, match="Hugging Face Hub"):
        import_cauldron(["HuggingFaceM4/the_cauldron:ai2d"], tmp_path / "o6", progress=False)


def write_big_parquet(path, n, seed=0):
    """n rows of one ~100 KB noise PNG each, written 32 rows per row group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, n, 32):
            rows = []
            for _ in range(start, min(n, start + 32)):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(buffer, format="PNG")
                rows.append({"images": [{"bytes": buffer.getvalue(), "path": None}],
                             "texts": [{"user": "q", "assistant": "a", "source": "s"}]})
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), row_group_size=32)


def test_memory_stays_bounded_by_a_batch(tmp_path):
    """Peak memory of the conversion (own process) does not grow with the number of rows: 8x the rows
    (~25 MB of images vs ~3 MB) costs at most a few batches more."""
    import subprocess
    import sys

    peaks = {}
    for n in (32, 256):
        write_big_parquet(tmp_path / f"big{n}.parquet", n)
        code = ("import json, sys; from nanovlm.data.cauldron import import_cauldron; "
                "print(json.dumps(import_cauldron([sys.argv[1]], sys.argv[2], progress=False)))")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"big{n}.parquet"), str(tmp_path / f"o{n}")],
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        assert stats["records"] == n
        peaks[n] = stats["peak_rss_mb"]
    assert peaks[256] < peaks[32] + 15, peaks


def test_other_shapes_of_rows_convert_or_fail_clearly(tmp_path):
    """Hypothesis-generated rows through the schema's variants: each file converts row for row or stops with one
    DatasetFormatError; nothing else escapes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.one_of(st.none(), st.text(max_size=12))
    turn = st.fixed_dictionaries({"user": text, "assistant": text, "source": text})
    image = st.one_of(st.builds(lambda k: {"bytes": picture(k), "path": None}, st.integers(0, 5)),
                      st.just({"bytes": None, "path": None}), st.just({"bytes": b"junk", "path": "x.png"}),
                      st.just({"bytes": None, "path": "../../etc/passwd"}))
    row = st.fixed_dictionaries({"images": st.lists(image, max_size=3), "texts": st.lists(turn, max_size=3)})
    runs = iter(range(10**6))

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(rows=st.lists(row, min_size=1, max_size=6))
    def check(rows):
        k = next(runs)
        write_parquet(tmp_path / f"f{k}.parquet", rows)
        try:
            stats = import_cauldron([tmp_path / f"f{k}.parquet"], tmp_path / f"o{k}", progress=False)
        except DatasetFormatError as e:
            assert "row" in str(e)
            return
        assert stats["rows"] == len(rows) == stats["records"] + stats["skipped"]
        assert len(read_records(tmp_path / f"o{k}")) == stats["records"]

    check()
