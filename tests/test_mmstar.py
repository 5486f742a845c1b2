"""MMStar: import from its parquet schema, the lmms-eval prompt, letter extraction on tricky answers, and the
averages (overall = mean over l2_category) on a hand-built fixture with a known result."""
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nanovlm.data.format import DatasetFormatError, read_records
from nanovlm.data.mmstar import import_mmstar
from nanovlm.evaluate import evaluate, get_scorer
from nanovlm.evaluate.mmstar import POST_PROMPT, extract_letter

QUESTION = ("Which option describe the object relationship in the image correctly?\nOptions: A: The suitcase is on "
            "the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., D: The suitcase is "
            "beneath the book.")


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B) The suitcase is beneath the cat.", "B"), ("b", "B"),
    ("option B", "B"), ("Option C.", "C"), ("The answer is B", "B"), ("The answer is (D).", "D"),
    ("Answer: C", "C"), ("I think the answer is A.", "A"), ("A", "A"), ("A.", "A"), ("(A)", "A"),
    ("A: The suitcase is on the book.", "A"), ("  D\n", "D"), ("C is the right one", "C"),
    ("A dog is on the sofa.", None), ("A suitcase is beneath the book.", None), ("the answer is a dog", None),
    ("Because it is big.", None), ("Dogs", None), ("", None), ("The suitcase is beneath the book.", None),
    ("E", None),
])
def test_letter_extraction(answer, letter):
    assert extract_letter(answer) == letter


# (model answer, gold, category, l2_category)
TRICKY = [
    ("B", "B", "coarse perception", "image scene and topic"),              # right
    ("(C)", "C", "coarse perception", "image scene and topic"),            # right
    ("A dog is sitting on the sofa.", "A", "coarse perception", "image scene and topic"),   # article: wrong
    ("The answer is D", "D", "coarse perception", "image style & quality"),                # right
    ("option A", "B", "fine-grained perception", "object counting"),       # wrong letter
    ("A.", "A", "fine-grained perception", "object counting"),             # right
    ("There are three.", "C", "fine-grained perception", "object counting"),   # no letter: wrong
    ("D. Four apples", "D", "fine-grained perception", "object counting"),     # right
    ("C", "D", "math", "numeric commonsense & calculation"),               # wrong
    ("The answer is (A).", "A", "math", "numeric commonsense & calculation"),  # right
]
# l2 accuracies: scene 2/3, style 1/1, counting 2/4, numeric 1/2 -> overall (2/3 + 1 + 1/2 + 1/2) / 4
EXPECTED_OVERALL = (2 / 3 + 1 + 1 / 2 + 1 / 2) / 4
EXPECTED_MICRO = 6 / 10


def test_tricky_fixture_gives_exactly_the_expected_accuracy():
    scorer = get_scorer("mmstar")
    records = [{"id": f"mmstar-{i}", "images": ["x.png"], "texts": [{"user": QUESTION, "assistant": gold}],
                "meta": {"answer": gold, "category": cat, "l2_category": l2}}
               for i, (_, gold, cat, l2) in enumerate(TRICKY)]
    items = [item for r in records for item in scorer.items(r)]
    assert all(i.question.endswith("\nAnswer with the option's letter from the given choices directly") for i in items)
    scores = [scorer.score(answer, item) for (answer, *_), item in zip(TRICKY, items)]
    summary = scorer.summarize(scores, items)
    assert summary["overall"] == pytest.approx(EXPECTED_OVERALL, abs=1e-12)
    assert summary["micro_accuracy"] == pytest.approx(EXPECTED_MICRO)
    assert summary["no_letter"] == pytest.approx(2 / 10)
    assert summary["by_category"]["coarse perception"] == {"n": 4, "accuracy": 0.75}
    assert summary["by_category"]["math"] == {"n": 2, "accuracy": 0.5}
    assert summary["by_l2_category"]["object counting"] == {"n": 4, "accuracy": 0.5}


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_mmstar(path, rows):
    schema = pa.schema([("index", pa.int64()), ("question", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("answer", pa.string()), ("category", pa.string()), ("l2_category", pa.string()),
                        ("meta_info", pa.struct([("source", pa.string())]))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=4)


def mmstar_rows():
    return [{"index": i, "question": QUESTION, "image": {"bytes": jpeg((i * 20, 0, 0)), "path": f"{i}.jpg"},
             "answer": gold, "category": cat, "l2_category": l2, "meta_info": {"source": "MMBench"}}
            for i, (_, gold, cat, l2) in enumerate(TRICKY)]


def test_import_and_evaluate_through_the_runner(tmp_path, monkeypatch):
    write_mmstar(tmp_path / "val.parquet", mmstar_rows())
    stats = import_mmstar([tmp_path / "val.parquet"], tmp_path / "mmstar", progress=False)
    assert stats["records"] == 10 and stats["images_written"] == 10
    records = read_records(tmp_path / "mmstar", split="test")
    assert [r["id"] for r in records] == [f"mmstar-{i:04d}" for i in range(10)]
    assert records[2]["meta"] == {"index": 2, "answer": "A", "category": "coarse perception",
                                  "l2_category": "image scene and topic"}
    asked = []

    def complete(model, images, answer_starts, questions, max_new_tokens, batch_size):
        asked.extend(questions)
        assert max_new_tokens <= 32
        return [TRICKY[len(asked) - len(questions) + k][0] for k in range(len(questions))]
    monkeypatch.setattr("nanovlm.predict.complete", complete)

    class Model:
        tokenizer = None

    result = evaluate(Model(), tmp_path / "mmstar", "mmstar", batch_size=4, progress=False)
    assert result["summary"]["overall"] == pytest.approx(EXPECTED_OVERALL)
    assert asked[0] == QUESTION + POST_PROMPT
    assert "| by l2 category | n | accuracy |" in result["table"]


def test_import_errors(tmp_path):
    rows = mmstar_rows()
    rows[3]["answer"] = "E"
    write_mmstar(tmp_path / "bad.parquet", rows)
    with pytest.raises(DatasetFormatError, match="bad.parquet row 3: answer 'E' is not one of A, B, C, D"):
        import_mmstar([tmp_path / "bad.parquet"], tmp_path / "o", progress=False)
    pq.write_table(pa.table({"index": [1], "question": ["q"]}), tmp_path / "thin.parquet")
    with pytest.raises(DatasetFormatError, match=r"no column\(s\) \['image', 'answer'"):
        import_mmstar([tmp_path / "thin.parquet"], tmp_path / "o", progress=False)
    write_mmstar(tmp_path / "good.parquet", mmstar_rows())
    import_mmstar([tmp_path / "good.parquet"], tmp_path / "o2", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_mmstar([tmp_path / "good.parquet"], tmp_path / "o2", progress=False)
