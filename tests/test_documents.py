"""The documents generator: every field in meta is visible where meta says, the same seed gives the same bytes,
ground truth and anomalies agree with each other, and bad arguments are one clear error."""
import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from nanovlm.config import ConfigError
from nanovlm.data.documents import KINDS, LAYOUTS, make_documents
from nanovlm.data.documents import fields as f
from nanovlm.data.format import read_records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Every kind in every layout (12 documents), all three styles."""
    out = tmp_path_factory.mktemp("docs")
    for layout in LAYOUTS:
        make_documents(out / layout, n=3, layouts=[layout], styles=["fields", "qa", "checks"], seed=7,
                       progress=False)
    return out


def _records(dataset):
    return [r for layout in LAYOUTS for r in read_records(dataset / layout)]


def _grey(dataset, record) -> np.ndarray:
    layout = record["meta"]["layout"]
    return np.asarray(Image.open(dataset / layout / record["images"][0]).convert("L"), dtype=np.float32)


def _ink_in(page: np.ndarray, box) -> float:
    """How much darker than the paper the darkest ink in the box is (paper = the page's median grey)."""
    x0, y0, x1, y1 = box
    crop = page[y0:y1, x0:x1]
    assert crop.size, f"empty box {box}"
    return float(np.median(page) - np.percentile(crop, 5))


def test_every_field_in_meta_is_visible_in_its_box(dataset):
    seen = set()
    for record in _records(dataset):
        meta = record["meta"]
        if meta["style"] != "fields":
            continue
        page = _grey(dataset, record)
        h, w = page.shape
        assert set(meta["boxes"]) == set(meta["fields"]), "every field has a box"
        for key, box in meta["boxes"].items():
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h, (record["id"], key, box)
            assert _ink_in(page, box) > 60, f"{record['id']} {key}={meta['fields'][key]!r}: no ink in {box}"
        for row in meta.get("transactions", []):
            for cell in row.values():
                if cell["value"]:
                    assert _ink_in(page, cell["box"]) > 60, (record["id"], cell)
        seen.add((meta["kind"], meta["layout"]))
    assert seen == {(k, l) for k in KINDS for l in LAYOUTS}


def test_field_boxes_do_not_overlap(dataset):
    """Each box holds one field: two values never share pixels (so a crop reads one value)."""
    for record in _records(dataset):
        boxes = list(record["meta"]["boxes"].values())
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                # a 1.5 degree scan rotation grows boxes by a pixel or two at the corners
                assert overlap_w <= 3 or overlap_h <= 3, (record["id"], a, b)


def test_signature_is_drawn_only_when_present(dataset):
    for record in _records(dataset):
        meta = record["meta"]
        if meta["style"] != "checks":
            continue
        x0, y0, x1, y1 = meta["signature"]["box"]
        inside = [x0 + 4, y0 + 4, x1 - 4, y1 - 6]   # above the signature line
        ink = _ink_in(_grey(dataset, record), inside)
        assert (ink > 60) == meta["signature"]["present"], (record["id"], ink)
        assert meta["checks"]["signature_present"] == meta["signature"]["present"]
        assert ("missing_signature" in meta["anomalies"]) == (not meta["signature"]["present"])


def test_answers_match_the_ground_truth(dataset):
    for record in _records(dataset):
        meta = record["meta"]
        values = meta["fields"]
        if meta["style"] == "fields":
            answer = json.loads(record["texts"][0]["assistant"])
            assert answer == meta["answer"] and all(values[k] == v for k, v in answer.items())
            assert record["texts"][0]["user"].split(": ", 1)[1].split(", ") == list(answer)
        elif meta["style"] == "checks":
            assert json.loads(record["texts"][0]["assistant"]) == meta["checks"]
        else:
            for turn, q in zip(record["texts"], meta["questions"]):
                assert turn["assistant"] == values[q["key"]]
        date = values[meta["date_field"]]
        assert f.matches_format(date, meta["date_format"]) == meta["checks"]["date_format_valid"], date


def test_totals_check_agrees_with_the_numbers(dataset):
    money = lambda text: round(float(text.replace(",", "")) * 100) if text else 0
    for record in _records(dataset):
        meta = record["meta"]
        v = meta["fields"]
        if meta["kind"] == "trade":
            total = int(v["quantity"].replace(",", "")) * money(v["price"])
            assert (total == money(v["amount"])) == meta["checks"]["totals_match"]
        if meta["kind"] == "statement":
            moves = sum(money(r["credit"]["value"]) - money(r["debit"]["value"]) for r in meta["transactions"])
            assert (money(v["opening_balance"]) + moves == money(v["closing_balance"])) == meta["checks"]["totals_match"]


def test_same_seed_same_bytes_other_seed_other_documents(tmp_path):
    a = make_documents(tmp_path / "a", n=4, seed=3, progress=False)
    make_documents(tmp_path / "b", n=4, seed=3, progress=False)
    make_documents(tmp_path / "c", n=4, seed=4, progress=False)
    assert a["n"] == 4
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "records.jsonl").read_bytes() != (tmp_path / "c" / "records.jsonl").read_bytes()


def test_held_out_layout_and_split(tmp_path):
    make_documents(tmp_path, n=6, layouts=["table"], split="test", kinds=["trade"], progress=False)
    records = read_records(tmp_path)
    assert {r["meta"]["layout"] for r in records} == {"table"}
    assert {r["split"] for r in records} == {"test"} and {r["meta"]["kind"] for r in records} == {"trade"}


def test_existing_dataset_needs_overwrite(tmp_path):
    make_documents(tmp_path, n=2, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_documents(tmp_path, n=2, progress=False)
    make_documents(tmp_path, n=1, overwrite=True, progress=False)
    assert len(list((tmp_path / "images").iterdir())) == 1   # no page of the larger run left behind


@pytest.mark.parametrize("kwargs, message", [
    (dict(kinds=["passport"]), "unknown kind 'passport'"),
    (dict(styles=["essay"]), "unknown style"),
    (dict(layouts=["landscape"]), "unknown layout"),
    (dict(layouts=[]), "no layout given"),
    (dict(n=0), "n must be"),
    (dict(width=100), "page size"),
    (dict(height=5000), "page size"),
    (dict(split="holdout"), "split must be"),
    (dict(scan_strength=1.5), "scan strength"),
    (dict(scan_strength=float("nan")), "scan strength"),
])
def test_bad_arguments_are_one_config_error(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_documents(tmp_path / "x", progress=False, **{"n": 2, **kwargs})
    assert not (tmp_path / "x").exists()   # nothing written


# -----------------------------------------------------------------------------
# the field generators

def test_generators_make_well_formed_values():
    rng = random.Random(0)
    for _ in range(300):
        assert re.fullmatch(r"[A-Z]{3}[PCHFATBLJG][A-Z]\d{4}[A-Z]", f.pan(rng, "Sharma"))
        code = f.isin(rng)
        assert re.fullmatch(r"[A-Z]{2}[0-9A-Z]{9}\d", code) and f.is_valid_isin(code)
        date = f.recent_date(rng)
        for name in f.DATE_FORMATS:
            assert f.matches_format(f.write_date(date, name), name)
        off = f.off_format_date(rng, date)
        assert not any(f.matches_format(off, name) for name in f.DATE_FORMATS), off
        assert re.fullmatch(r"\d\d:\d\d(:\d\d)?|\d{1,2}:\d\d [AP]M", f.time_of_day(rng))
        assert re.fullmatch(r"[\d+() -]{10,17}", f.phone(rng))
        assert re.fullmatch(r"\d[\d ]{9,19}", f.account_number(rng))
    assert f.is_valid_isin("US0378331005") and f.is_valid_isin("INE002A01018")   # real ISINs
    assert not f.is_valid_isin("US0378331006")
    assert f.money(123456789) == "1,234,567.89" and f.money(-5, grouped=False) == "-0.05"
    assert len(f.CULTURES) >= 8
    assert len({f.person_name(rng) for _ in range(50)}) > 40


def test_read_curriculum_shows_only_the_field(tmp_path):
    make_documents(tmp_path, n=3, styles=["read"], progress=False)
    records = read_records(tmp_path)
    assert len(records) == 3 * 2 and {r["meta"]["style"] for r in records} == {"read"}
    for record in records:
        (key, value), = record["meta"]["fields"].items()
        assert record["texts"] == [{"user": "Read the text.", "assistant": value}]
        page = np.asarray(Image.open(tmp_path / record["images"][0]).convert("L"), dtype=np.float32)
        x0, y0, x1, y1 = record["meta"]["boxes"][key]
        assert _ink_in(page, [x0, y0, x1, y1]) > 60
        outside = page.copy()
        outside[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = np.median(page)
        assert np.abs(outside - np.median(page)).max() < 40, "ink outside the field's box"
