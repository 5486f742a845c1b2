"""The fields scorer on hand-built answers (exact match, CER, invalid JSON, calibration), the teacher-forced
confidence against the model's own loss, and `evaluate_fields` / `extract_fields` end to end on a tiny model."""
import json
import math

import pytest
import torch

from nanovlm.config import ConfigError, from_name
from nanovlm.data.documents import make_documents
from nanovlm.data.format import load_image
from nanovlm.evaluate.fields import (FieldsScorer, calibration, character_error_rate, evaluate_fields,
                                     field_confidences, parse_answer, score_answer, summarize, value_spans)
from nanovlm.evaluate.runner import Item
from nanovlm.extract import extract_fields, parse_field_names
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.tokenizer import Tokenizer

TRUTH = {"name": "Priya Sharma", "pan": "ABCPS1234F", "quantity": "1,250"}


def test_perfect_answer():
    s = score_answer(json.dumps(TRUTH), TRUTH)
    assert s["valid_json"] and s["exact"]
    assert all(f["exact"] and f["cer"] == 0 for f in s["fields"].values())


def test_one_wrong_character_and_one_missing_field():
    s = score_answer('{"name": "Priya Sharma", "pan": "ABCPS1234E"}', TRUTH)
    assert s["valid_json"] and not s["exact"]
    assert s["fields"]["name"]["exact"]
    assert not s["fields"]["pan"]["exact"] and s["fields"]["pan"]["cer"] == pytest.approx(1 / 10)
    assert s["fields"]["quantity"] == {"exact": False, "cer": 1.0, "predicted": None, "confidence": None}


def test_invalid_json_counts_every_field_wrong():
    for answer in ('{"name": "Priya Sharma", "pan": ', "name: Priya Sharma", '["Priya Sharma"]', ""):
        s = score_answer(answer, TRUTH)
        assert not s["valid_json"] and not s["exact"], answer
        assert not any(f["exact"] for f in s["fields"].values())
    assert parse_answer('  {"a": "b"}\n') == {"a": "b"} and parse_answer('{"a": 1} extra') is None


def test_types_must_match():
    """A check answered with the string "true" is not the boolean true; 1250 is not "1,250"."""
    s = score_answer('{"signature_present": "true", "totals_match": false}',
                     {"signature_present": True, "totals_match": False})
    assert not s["fields"]["signature_present"]["exact"] and s["fields"]["totals_match"]["exact"]
    assert not score_answer('{"quantity": 1250}', {"quantity": "1250"})["exact"]


def test_plain_answers_score_as_one_field():
    assert score_answer(" 1,250\n", {"quantity": "1,250"}, plain=True)["exact"]
    assert not score_answer("1250", {"quantity": "1,250"}, plain=True)["exact"]


def test_character_error_rate():
    assert character_error_rate("abc", "abc") == 0
    assert character_error_rate("abd", "abc") == pytest.approx(1 / 3)
    assert character_error_rate("", "abcd") == 1.0
    assert character_error_rate("abcdef", "ab") == 2.0     # insertions can push it past 1


def test_value_spans():
    text = '{"a": "x1", "b" : true,"c": {"d": [1, 2]}}'
    spans = value_spans(text)
    assert {k: text[s:e] for k, (s, e) in spans.items()} == {"a": '"x1"', "b": "true", "c": '{"d": [1, 2]}'}
    assert value_spans("not json") == {}
    assert value_spans('{"a": "x", "b": ') == {"a": (6, 9)}   # the part that parses


def test_calibration_table():
    pairs = [(0.99, True), (0.95, True), (0.9, False), (0.6, True), (0.3, False)]
    table = calibration(pairs, thresholds=(0.0, 0.5, 0.9, 0.99))
    assert table[">= 0"] == {"kept": 1.0, "accuracy": 0.6, "n": 5}
    assert table[">= 0.5"] == {"kept": 0.8, "accuracy": 0.75, "n": 4}
    assert table[">= 0.9"]["accuracy"] == pytest.approx(2 / 3) and table[">= 0.9"]["kept"] == 0.6
    assert table[">= 0.99"] == {"kept": 0.2, "accuracy": 1.0, "n": 1}
    assert calibration([(0.2, True)], thresholds=(0.5,))[">= 0.5"] == {"kept": 0.0, "accuracy": None, "n": 0}


def test_summary_rates_per_field_and_kind():
    scores = [score_answer(json.dumps(TRUTH), TRUTH, {"name": 0.9, "pan": 0.8, "quantity": 0.7}),
              score_answer('{"name": "Priya Sharma", "pan": "X", "quantity": "1,250"}', TRUTH,
                           {"name": 0.95, "pan": 0.2, "quantity": 0.6}),
              score_answer("oops", {"name": "Ravi"}, {"name": 0.0})]
    summary = summarize(scores, [{"kind": "kyc"}, {"kind": "kyc"}, {"kind": "trade"}])
    assert summary["answers"] == 3 and summary["fields"] == 7
    assert summary["field_exact"] == pytest.approx(5 / 7)
    assert summary["document_exact"] == pytest.approx(1 / 3)
    assert summary["invalid_json"] == pytest.approx(1 / 3)
    assert summary["by_field"]["pan"] == {"n": 2, "exact": 0.5, "cer": pytest.approx(0.5)}
    assert summary["by_field"]["name"]["exact"] == pytest.approx(2 / 3)
    assert summary["by_kind"]["kyc"]["document_exact"] == 0.5 and summary["by_kind"]["trade"]["field_exact"] == 0
    assert summary["calibration"][">= 0.5"] == {"kept": pytest.approx(5 / 7), "accuracy": 1.0, "n": 5}


def test_scorer_items_for_each_style(tmp_path):
    make_documents(tmp_path, n=3, styles=["fields", "qa", "checks", "read"], progress=False)
    from nanovlm.data.format import read_records

    scorer = FieldsScorer()
    records = read_records(tmp_path)
    assert sum(len(scorer.items(r)) for r in records) == 3 + 9 + 3 + 6
    for record in records:
        items = scorer.items(record)
        if record["meta"]["style"] in ("qa", "read"):
            assert [i.reference for i in items] == [{q["key"]: t["assistant"]} for q, t in
                                                    zip(record["meta"]["questions"], record["texts"])]
            assert all(i.meta["plain"] for i in items)
        else:
            assert [i.reference for i in items] == [json.loads(record["texts"][0]["assistant"])]
    assert scorer.items({"id": "x", "images": [], "texts": [{"user": "q", "assistant": "a"}]}) == []


# -----------------------------------------------------------------------------
# with a model

@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    folder = tmp_path_factory.mktemp("documents")
    make_documents(folder, n=6, styles=["fields", "qa"], split="test", progress=False)
    return folder


@pytest.fixture(scope="module")
def tiny_model(documents):
    from nanovlm.data.format import read_records

    texts = [t[k] for r in read_records(documents) for t in r["texts"] for k in ("user", "assistant")]
    tokenizer = Tokenizer.train(texts * 3, vocab_size=400)
    cfg = tokenizer.configure(from_name("tiny", {"decoder.max_seq_len": 512}))
    model = VisionLanguageModel(cfg).eval()
    model.tokenizer = tokenizer
    return model


def test_confidence_is_the_probability_of_the_value_tokens(tiny_model, documents):
    """The whole answer's confidence equals exp(-sum of the per-token losses) from the model's own forward."""
    image = load_image(documents, "images/kyc-000000.jpg")
    question, answer = "What is the PAN?", "ABCPS1234F"
    (key, confidence), = field_confidences(tiny_model, image, question, answer).items()
    assert key == ""
    tok = tiny_model.tokenizer
    ids, mask = tok.encode_conversation([{"user": question, "assistant": answer}],
                                        tiny_model.cfg.image_tokens_per_image)
    n = len(tok.encode(answer))
    labels = torch.full((len(ids),), -100)
    first = mask.index(True)
    labels[first - 1:first - 1 + n] = torch.tensor(ids[first:first + n])
    from nanovlm.data.transforms import to_tensor
    with torch.no_grad():
        _, loss = tiny_model(torch.tensor([ids]), to_tensor(image, tiny_model.cfg.vision)[None], labels=labels[None])
    assert confidence == pytest.approx(math.exp(-loss.item() * n), rel=1e-4)

    both = field_confidences(tiny_model, image, "Extract as JSON: name, pan", '{"name": "Ravi", "pan": "ABCPS1234F"}')
    assert set(both) == {"name", "pan"} and all(0 < p <= 1 for p in both.values())


def test_evaluate_fields_end_to_end(tiny_model, documents):
    result = evaluate_fields(tiny_model, documents, limit=4, batch_size=4, progress=False)
    summary = result["summary"]
    assert summary["answers"] == 4 and 0 <= summary["field_exact"] <= 1
    assert "calibration" in summary and summary["calibration"][">= 0"]["kept"] == 1.0
    assert all(f["confidence"] is not None for s in result["samples"] for f in s["score"]["fields"].values())
    assert "| by field |" in result["table"]
    untimed = evaluate_fields(tiny_model, documents, limit=2, batch_size=2, confidence=False, progress=False)
    assert "calibration" not in untimed["summary"]


def test_extract_fields(tiny_model, documents):
    result = extract_fields(tiny_model, load_image(documents, "images/kyc-000000.jpg"), ["name", "pan"],
                            max_new_tokens=8)
    assert set(result["fields"]) == {"name", "pan"} and isinstance(result["valid_json"], bool)
    if not result["valid_json"]:   # an untrained model writes noise: the raw text is kept for a person to see
        assert "raw" in result and result["fields"] == {"name": None, "pan": None}


@pytest.mark.parametrize("text", ["", "name,,pan", "Name", "name pan", "name,name", "näme"])
def test_bad_field_lists(text):
    with pytest.raises(ConfigError):
        parse_field_names(text)
    assert parse_field_names(" name, date_of_birth ") == ["name", "date_of_birth"]


def test_scorer_item_shape():
    item = Item(id="a", images=[], question="Extract as JSON: name", reference={"name": "Ravi"},
                meta={"plain": False})
    assert FieldsScorer().score('{"name": "Ravi"}', item)["exact"]   # no model attached: no confidence, still scored


def test_the_documents_preset_reads_pages_as_they_are_with_its_recipe(tmp_path, capsys):
    """Two steps of `nanovlm train --preset documents` through the CLI: the recipe is announced and used (no
    augmentation, one digit per token), the 384 x 256 page is not squeezed, and the model it saves reads a page."""
    from nanovlm.cli import main
    from nanovlm.train import PRESET_RECIPES

    documents, out = tmp_path / "docs", tmp_path / "run"
    make_documents(documents, n=10, styles=["fields"], progress=False)
    assert main(["train", "--preset", "documents", "--data", str(documents), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--set", "eval_every=2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "preset documents trains with its recipe" in printed and "split_digits=True" in printed
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["steps"] == 2 and settings["augment"] is False and settings["split_digits"] is True
    assert settings["lr"] == PRESET_RECIPES["documents"]["lr"]            # taken from the recipe, not the flag default
    model = VisionLanguageModel.from_pretrained(out / "best").eval()
    assert (model.cfg.vision.image_size, model.cfg.vision.height) == (384, 256)
    assert [model.tokenizer.hf.id_to_token(i) for i in model.tokenizer.encode("2023")] == ["2", "0", "2", "3"]
    result = extract_fields(model, load_image(documents, "images/kyc-000000.jpg"), ["pan"], max_new_tokens=4)
    assert isinstance(result["valid_json"], bool)
