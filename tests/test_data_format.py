import json
from collections import Counter

import pytest
from PIL import Image

from nanovlm.data.format import (DatasetFormatError, assign_split, load_image, read_records, validate_record,
                                 write_records)


def record(i, split=None, images=None, **extra):
    rec = {"id": f"r{i}", "images": images if images is not None else [f"images/{i}.png"],
           "texts": [{"user": "Describe the picture.", "assistant": f"I see thing {i}."}]}
    if split:
        rec["split"] = split
    rec.update(extra)
    return rec


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    records = [record(0, "train", meta={"objects": []}), record(1, "val"), record(2, "test"), record(3)]
    write_records(tmp_path, records)
    return tmp_path, records


def write_lines(folder, lines):
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "records.jsonl"


def test_roundtrip_and_canonical_field_order(dataset):
    folder, records = dataset
    assert read_records(folder) == records
    first = (folder / "records.jsonl").read_text().splitlines()[0]
    assert list(json.loads(first)) == ["id", "images", "texts", "split", "meta"]
    assert [p.name for p in folder.iterdir()] and not list(folder.glob(".*tmp"))   # no temp file left behind


def test_split_filter_and_default_train(dataset):
    folder, _ = dataset
    assert [r["id"] for r in read_records(folder, split="train")] == ["r0", "r3"]   # no split field = train
    assert [r["id"] for r in read_records(folder, split="val")] == ["r1"]
    assert [r["id"] for r in read_records(folder, split="test")] == ["r2"]
    with pytest.raises(ValueError):
        read_records(folder, split="dev")


def test_blank_lines_are_allowed(tmp_path):
    write_lines(tmp_path, ["", json.dumps(record(0, images=[])), "   ", json.dumps(record(1, images=[]))])
    assert [r["id"] for r in read_records(tmp_path)] == ["r0", "r1"]


def test_missing_folder_and_missing_records_file(tmp_path):
    with pytest.raises(DatasetFormatError, match="dataset folder not found"):
        read_records(tmp_path / "nope")
    with pytest.raises(DatasetFormatError, match=r"records\.jsonl.*no records\.jsonl"):
        read_records(tmp_path)


def test_bad_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path, [json.dumps(record(0, images=[])), "", '{"id": "r1", "images": [', ])
    with pytest.raises(DatasetFormatError) as e:
        read_records(tmp_path)
    assert f"{path} line 3" in str(e.value) and "not valid JSON" in str(e.value)


def test_unknown_field_names_file_line_and_fix(tmp_path):
    path = write_lines(tmp_path, [json.dumps(record(0, images=[])), json.dumps(record(1, images=[], caption="x"))])
    with pytest.raises(DatasetFormatError) as e:
        read_records(tmp_path)
    message = str(e.value)
    assert f"{path} line 2" in message and "'caption'" in message and "meta" in message


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.pop("texts"), "missing field 'texts'"),
    (lambda r: r.update(texts=[]), "non-empty list"),
    (lambda r: r.update(texts=[{"user": "q"}]), '"user" and "assistant"'),
    (lambda r: r.update(texts=[{"user": "q", "assistant": 3}]), "must be a string"),
    (lambda r: r.update(images="a.png"), '"images" must be a list'),
    (lambda r: r.update(images=["../outside.png"]), "not inside the dataset folder"),
    (lambda r: r.update(images=["/abs/a.png"]), "not inside the dataset folder"),
    (lambda r: r.update(id=""), '"id" must be a non-empty string'),
    (lambda r: r.update(split="dev"), '"split" is'),
    (lambda r: r.update(meta=[1]), '"meta" must be an object'),
])
def test_validate_record_rejects_bad_fields(change, expected):
    rec = record(0)
    change(rec)
    with pytest.raises(DatasetFormatError, match="somewhere.jsonl line 9") as e:
        validate_record(rec, "somewhere.jsonl line 9")
    assert expected in str(e.value)


def test_validate_record_rejects_non_objects():
    with pytest.raises(DatasetFormatError, match="must be a JSON object"):
        validate_record([1, 2], "f.jsonl line 1")


def test_missing_image_names_line_and_file(dataset):
    folder, _ = dataset
    (folder / "images" / "2.png").unlink()
    with pytest.raises(DatasetFormatError) as e:
        read_records(folder)
    assert "line 3" in str(e.value) and "2.png" in str(e.value) and "not found" in str(e.value)
    assert len(read_records(folder, check_images=False)) == 4
    assert len(read_records(folder, split="train")) == 2   # only the returned records' images are checked


def test_duplicate_id_names_both_lines(tmp_path):
    write_lines(tmp_path, [json.dumps(record(0, images=[])), json.dumps(record(1, images=[])),
                           json.dumps(record(0, images=[]))])
    with pytest.raises(DatasetFormatError, match=r"line 3: duplicate id 'r0' \(first used on line 1\)"):
        read_records(tmp_path)


def test_write_rejects_bad_records_and_keeps_old_file(dataset):
    folder, records = dataset
    before = (folder / "records.jsonl").read_bytes()
    with pytest.raises(DatasetFormatError, match=r"record 2\).*duplicate id 'r0'"):
        write_records(folder, [record(0), record(0)])
    with pytest.raises(DatasetFormatError, match="unknown field 'extra'"):
        write_records(folder, [record(0, extra=1)])
    with pytest.raises(DatasetFormatError, match="not JSON-serialisable"):
        write_records(folder, [record(0, meta={"x": float("nan")})])
    assert (folder / "records.jsonl").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_creates_folder_and_is_deterministic(tmp_path):
    records = [record(i, images=[], meta={"b": 1, "a": [1.5, "ü"]}) for i in range(3)]
    write_records(tmp_path / "a" / "b", records)
    write_records(tmp_path / "c", records)
    assert (tmp_path / "a" / "b" / "records.jsonl").read_bytes() == (tmp_path / "c" / "records.jsonl").read_bytes()
    assert "ü" in (tmp_path / "c" / "records.jsonl").read_text(encoding="utf-8")


def test_bad_utf8_names_line(tmp_path):
    (tmp_path / "records.jsonl").write_bytes(json.dumps(record(0, images=[])).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DatasetFormatError, match="line 2: not valid UTF-8"):
        read_records(tmp_path)


def test_load_image_converts_to_rgb(tmp_path):
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("P", (5, 4)).save(tmp_path / "palette.gif")
    gray = load_image(tmp_path, "gray.png")
    assert gray.mode == "RGB" and gray.size == (5, 4) and gray.getpixel((0, 0)) == (128, 128, 128)
    assert load_image(tmp_path, "clear.png").getpixel((0, 0)) == (255, 255, 255)   # transparent -> white
    assert load_image(tmp_path, "palette.gif").mode == "RGB"


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetFormatError, match=r"broken\.png: cannot read the image"):
        load_image(tmp_path, "broken.png")
    with pytest.raises(DatasetFormatError, match=r"gone\.png: image file not found"):
        load_image(tmp_path, "gone.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match=r"cut\.png"):
        load_image(tmp_path, "cut.png")


def test_assign_split_is_deterministic_and_follows_fractions():
    keys = [f"item-{i}" for i in range(5000)]
    splits = [assign_split(k, seed=1) for k in keys]
    assert splits == [assign_split(k, seed=1) for k in keys]
    counts = Counter(splits)
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["val"] / 5000 - 0.1) < 0.02
    assert splits != [assign_split(k, seed=2) for k in keys]
    assert {assign_split(k, 0, (1.0, 0.0, 0.0)) for k in keys[:200]} == {"train"}
    assert {assign_split(k, 0, (0.5, 0.5, 0.0)) for k in keys[:200]} == {"train", "val"}


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_assign_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        assign_split("k", 0, fractions)
