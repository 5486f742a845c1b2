"""ROUGE-1 novelty: the fast nearest-description search agrees with `rouge-score` exactly."""
import random

import pytest
from rouge_score import rouge_scorer

from nanovlm.config import ConfigError
from nanovlm.data.synth import make_scenes
from nanovlm.evaluate import evaluate
from nanovlm.evaluate.rouge import NearestRouge1, RougeNovelty, novelty_summary, plot_histogram

WORDS = "i see a big small red blue dog cat ball tree the is on left right and sky sun green two three".split()


def random_text(rng, n_min=0, n_max=30):
    words = [rng.choice(WORDS) for _ in range(rng.randint(n_min, n_max))]
    return " ".join(words).capitalize() + rng.choice([".", "!", "", " 2 dogs, 3 cats!"])


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_values_agree_with_rouge_score_on_sample_pairs(use_stemmer):
    rng = random.Random(0)
    references = [random_text(rng) for _ in range(150)] + ["", "!!!", "Running dogs ran; the runner runs."]
    candidates = [random_text(rng) for _ in range(40)] + ["", "dogs running", references[5], "The DOG, the dog."]
    index = NearestRouge1(references, use_stemmer=use_stemmer)
    reference_scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=use_stemmer)
    for candidate in candidates:
        expected = [reference_scorer.score(r, candidate)["rouge1"].fmeasure for r in references]
        assert index.scores(candidate).tolist() == pytest.approx(expected, abs=1e-12)
        best, at = index.best_match(candidate)
        assert best == pytest.approx(max(expected), abs=1e-12) and expected[at] == pytest.approx(best, abs=1e-12)
    assert index.best_match(references[5]) == (1.0, 5)   # a copy of a training description scores 1


def test_summary_histogram_and_empty_training_data(tmp_path):
    summary = novelty_summary([0.2, 0.4, 0.6, 0.9])
    assert summary == {"samples": 4, "rouge1_mean": pytest.approx(0.525), "rouge1_median": pytest.approx(0.5),
                       "share_above_0_5": 0.5}
    path = plot_histogram([0.2, 0.4, 0.6, 0.9], tmp_path / "fig8.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError):
        NearestRouge1([])


def test_rouge_scorer_on_the_evaluation_runner(tmp_path, monkeypatch):
    folder = tmp_path / "scenes"
    make_scenes(folder, n=30, style="short", image_size=32, seed=0, progress=False)

    def copy_the_reference(model, images, answer_starts, questions, max_new_tokens, batch_size):
        return [model.by_start[s][len(s):] for s in answer_starts]   # a model that recites its training text

    monkeypatch.setattr("nanovlm.predict.complete", copy_the_reference)
    scorer = RougeNovelty.from_training_data(folder)
    train_texts = scorer.index.references

    class Reciter:
        tokenizer = type("T", (), {"encode": staticmethod(lambda text: text.split())})()
        by_start = {}

    from nanovlm.data.format import read_records
    from nanovlm.evaluate.rouge import heldout_items
    for record in read_records(folder, split="test"):   # "recite" a training text that starts the same way
        item = heldout_items(record)[0]
        Reciter.by_start[item.answer_start] = item.answer_start + " " + train_texts[0]
    result = evaluate(Reciter(), folder, scorer, split="test", progress=False)
    summary = result["summary"]
    assert summary["samples"] == len(result["samples"]) > 0
    assert 0 < summary["rouge1_mean"] < 1 and result["samples"][0]["score"]["closest_train"] == train_texts[0]
    assert "rouge1 mean" in result["table"]
    with pytest.raises(ConfigError, match="training descriptions"):
        RougeNovelty().score("I see", None)
