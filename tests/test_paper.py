"""`nanovlm paper` in miniature: the whole sweep (data, training per size, Figure 6, grounding, ROUGE, Table 3
through a local OpenAI-compatible judge) on tiny models, few steps."""
import json

import pytest

from nanovlm.chat import ChatSettings
from nanovlm.config import ConfigError
from nanovlm.data.format import read_records
from nanovlm.paper import LONG_QUESTION, PaperConfig, prepare_scenes, run_paper, steps_for
from openai_server import FakeChatServer

TINY = dict(sizes=["tiny"], n_scenes=24, image_size=32, batch_size=4, eval_samples=2, max_new_tokens=6, progress=False,
            train_overrides={"decoder.max_seq_len": 256, "eval_batches": 1})


def test_tiny_sweep_end_to_end_with_a_judge(tmp_path):
    grades = json.dumps({"assessment": "fine", "grammar": 6, "creativity": 4, "consistency": 5,
                         "meaningfulness": 3, "plot": 2})
    with FakeChatServer(reply=lambda messages, model: grades) as server:
        judge = ChatSettings(base_url=server.base_url, model="judge", concurrency=2, backoff_s=0.01)
        report = run_paper(PaperConfig(out=str(tmp_path / "paper"), budget="steps", steps=2, judge=judge, **TINY),
                           log=lambda *a: None)
        assert len(server.requests) == 4   # 2 short + 2 long held-out samples graded
    row = report["sizes"]["tiny"]
    assert row["steps"] == 2 and row["params"] > 0 and row["val_loss"] > 0
    assert 0 <= row["object_accuracy_short"] <= 1 and 0 <= row["object_accuracy_long"] <= 1
    assert 0 <= row["rouge1_mean"] <= 1 and row["table3"]["total"] == 20 and row["table3"]["graded"] == 4
    out = tmp_path / "paper"
    for path in ("loss_curves.png", "tiny/rouge_hist.png"):
        assert (out / path).read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "report.md").read_text()
    assert "| tiny |" in markdown and "Table 3" in markdown and "| tiny | 6.00 | 4.00 |" in markdown
    records = read_records(out / "data")   # short and long of the same 24 pictures, each split kept together
    assert len(records) == 48 and sum(r["texts"][0]["user"] == LONG_QUESTION for r in records) == 24
    split = {r["id"]: r["split"] for r in records}
    assert all(split[f"long-{i[6:]}"] == s for i, s in split.items() if i.startswith("short-"))
    with pytest.raises(FileExistsError, match="shows every size asked for.*--overwrite"):
        run_paper(PaperConfig(out=str(out), budget="steps", steps=2, **TINY), log=lambda *a: None)


def test_a_finished_sweep_is_extended_by_new_sizes_never_shrunk(tmp_path):
    out = tmp_path / "paper"
    cfg = dict(out=str(out), budget="steps", steps=2, **TINY)
    run_paper(PaperConfig(**cfg), log=lambda *a: None)
    trained_at = (out / "tiny" / "best" / "model.safetensors").stat().st_mtime_ns
    lines = []
    report = run_paper(PaperConfig(**{**cfg, "sizes": ["tiny", "mini"]}), log=lines.append)
    assert list(report["sizes"]) == ["tiny", "mini"] and "training mini for 2 steps" in lines
    assert (out / "tiny" / "best" / "model.safetensors").stat().st_mtime_ns == trained_at
    assert "| tiny |" in (out / "report.md").read_text() and "| mini |" in (out / "report.md").read_text()
    before = (out / "report.json").read_text()
    with pytest.raises(FileExistsError, match="would not keep mini.*--overwrite"):   # `--sizes tiny` would drop it
        run_paper(PaperConfig(**cfg), log=lambda *a: None)
    assert (out / "report.json").read_text() == before


def test_an_interrupted_sweep_reuses_the_sizes_it_finished(tmp_path):
    out = tmp_path / "paper"
    cfg = dict(out=str(out), budget="steps", steps=2, **TINY)
    run_paper(PaperConfig(**cfg), log=lambda *a: None)
    weights = out / "tiny" / "best" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    (out / "report.json").unlink()          # as if the sweep was killed before its report
    lines = []
    report = run_paper(PaperConfig(**cfg), log=lines.append)
    assert any(line.startswith("reusing tiny") for line in lines) and weights.stat().st_mtime_ns == trained_at
    assert report["sizes"]["tiny"]["steps"] == 2 and (out / "report.json").is_file()
    (out / "report.json").unlink()
    with pytest.raises(FileExistsError, match=r"other settings \(lr\).*--overwrite"):   # never replaced silently
        run_paper(PaperConfig(**{**cfg, "lr": 5e-4}), log=lines.append)
    assert weights.stat().st_mtime_ns == trained_at
    lines.clear()
    run_paper(PaperConfig(**{**cfg, "lr": 5e-4, "overwrite": True}), log=lines.append)
    assert not any(line.startswith("reusing tiny") for line in lines) and "training tiny for 2 steps" in lines
    saved = json.loads((out / "tiny" / "sweep_row.json").read_text())
    assert saved["settings"]["lr"] == 5e-4 and saved["row"]["model"] == str(out / "tiny" / "best")
    (out / "tiny" / "sweep_row.json").write_text("{not json")   # an unreadable row: that size is trained again
    (out / "report.json").unlink()
    lines.clear()
    run_paper(PaperConfig(**{**cfg, "lr": 5e-4}), log=lines.append)
    assert "training tiny for 2 steps" in lines


def test_time_budget_turns_minutes_into_steps(tmp_path):
    lines = []
    cfg = PaperConfig(out=str(tmp_path / "paper"), budget="time", minutes=0.5, calibration_steps=2,
                      image_tokens="patches", **{**TINY, "n_scenes": 8})
    steps, seconds_per_step = steps_for(cfg, "tiny", prepare_scenes(cfg, log=lines.append), log=lines.append)
    assert seconds_per_step > 0 and steps == max(1, int(0.5 * 60 / seconds_per_step))
    assert any("s/step measured" in line for line in lines)
    trained = json.loads((tmp_path / "paper" / "calibration" / "tiny" / "train_config.json").read_text())
    assert trained["steps"] == 3 and trained["model"]["projector.source"] == "patches"
    assert steps_for(PaperConfig(budget="steps", steps=7, **TINY), "tiny", None) == (7, None)


@pytest.mark.parametrize("bad", [dict(budget="hours"), dict(image_tokens="all"), dict(sizes=["mini", "mini"]),
                                 dict(sizes=["huge"]), dict(minutes=0)])
def test_bad_settings_fail_before_any_work(bad):
    with pytest.raises(ConfigError):
        PaperConfig(**bad)
