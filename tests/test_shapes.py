"""The shapes diagnostic (nanovlm.data.shapes), its scorer, the vision probe, the contrastive loss and the
EfficientNet-Lite0 stem's configuration."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from nanovlm import cli
from nanovlm.config import ConfigError, from_name
from nanovlm.contrastive import image_text_contrastive
from nanovlm.data import format as fmt
from nanovlm.data.shapes import (ALL_COLORS, ALL_SHAPES, GEOMETRIC, SILHOUETTES, ask_shapes_questions, check_shapes,
                                 heldout_combinations, make_shapes, plan_shapes, render_shapes)
from nanovlm.evaluate.runner import Item, get_scorer
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.probe import ShapeProbe, grad_norms, linear_probe_accuracy
from nanovlm.train import TrainConfig

from conftest import tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n=120, image_size=32, seed=3, progress=False)
    return folder


@pytest.mark.parametrize("objects, questions", [("1", "shape"), ("2-3", "color"), ("2-3", "relation")])
def test_objects_and_questions_isolate_one_skill(tmp_path, objects, questions):
    make_shapes(tmp_path, n=60, image_size=32, seed=1, progress=False, objects=objects, questions=questions)
    records = fmt.read_records(tmp_path)
    low, _, high = objects.partition("-")
    for record in records:
        assert int(low) <= len(record["meta"]["objects"]) <= int(high or low)
        assert record["texts"] and {q["type"] for q in record["meta"]["questions"]} == {questions}
        assert len(record["texts"]) == len(record["meta"]["questions"])
    if questions == "shape" and objects == "1":   # one thing: its shape is the answer, and held-out pairs stay in test
        assert all(r["texts"][0]["assistant"] == r["meta"]["objects"][0]["shape"] for r in records)
        assert not any(o["heldout_combo"] for r in records if r["split"] != "test" for o in r["meta"]["objects"])


def test_default_options_keep_the_same_bytes(tmp_path, dataset):
    """The skill options are applied after the same random draws: their defaults change nothing."""
    make_shapes(tmp_path, n=120, image_size=32, seed=3, progress=False, objects="1-3", questions="all")
    assert (tmp_path / "records.jsonl").read_bytes() == (dataset / "records.jsonl").read_bytes()


def test_same_arguments_same_bytes(tmp_path, dataset):
    make_shapes(tmp_path, n=120, image_size=32, seed=3, progress=False)
    for name in ("records.jsonl", "images/shapes-000007.png", "images/shapes-000119.png"):
        assert (tmp_path / name).read_bytes() == (dataset / name).read_bytes()
    other = tmp_path / "other"
    make_shapes(other, n=5, image_size=32, seed=4, progress=False)
    assert (other / "records.jsonl").read_bytes() != (dataset / "records.jsonl").read_bytes()[:1000]


def test_records_are_valid_and_answers_match_the_objects(dataset):
    records = fmt.read_records(dataset)
    assert len(records) == 120 and {r["split"] for r in records} == {"train", "val", "test"}
    for record in records:
        objects = record["meta"]["objects"]
        assert 1 <= len(objects) <= 3
        assert len({o["shape"] for o in objects}) == len(objects) == len({o["color"] for o in objects})
        by_color = {o["color"]: o["shape"] for o in objects}
        by_shape = {o["shape"]: o["color"] for o in objects}
        for turn, q in zip(record["texts"], record["meta"]["questions"]):
            if q["type"] == "shape":
                color = next(c for c in by_color if c in turn["user"].rstrip("?").split())
                assert turn["assistant"] == by_color[color]
            elif q["type"] == "color":
                assert turn["assistant"] == by_shape[turn["user"].rstrip("?").split()[-1]]
            elif q["type"] == "count":
                assert turn["assistant"] == ["one", "two", "three"][len(objects) - 1]
            else:
                assert q["type"] == "relation" and turn["assistant"] in ("yes", "no")


def test_heldout_combinations_are_never_in_training(dataset):
    held = heldout_combinations(ALL_SHAPES)
    assert len(held) == len(ALL_SHAPES) and {s for s, _ in held} == set(ALL_SHAPES)
    assert {c for _, c in held} == set(ALL_COLORS)          # every colour is still seen with other shapes
    seen_in_test = 0
    for record in fmt.read_records(dataset):
        pairs = {(o["shape"], o["color"]) for o in record["meta"]["objects"]}
        flags = [o["heldout_combo"] for o in record["meta"]["objects"]]
        assert flags == [(o["shape"], o["color"]) in held for o in record["meta"]["objects"]]
        if record["split"] != "test":
            assert not pairs & held, record["id"]
        else:
            seen_in_test += bool(pairs & held)
    assert seen_in_test >= 3
    # and at scale, without drawing: 2,000 training plans never hold one
    rng = random.Random(0)
    assert not any((o["shape"], o["color"]) in held for _ in range(2000) for o in plan_shapes(rng)["objects"])


def test_colour_size_and_place_say_nothing_about_shape():
    rng = random.Random(1)
    objects = [o for _ in range(6000) for o in plan_shapes(rng)["objects"]]
    by_shape = {s: [o for o in objects if o["shape"] == s] for s in ALL_SHAPES}
    for shape, items in by_shape.items():
        assert len(items) > 600
        for key in ("x", "y"):
            assert abs(sum(o[key] for o in items) / len(items) - 0.5) < 0.03, (shape, key)
        radius = sum(o["radius"] for o in items) / len(items)
        assert abs(radius - 0.155) < 0.01, shape
        colours = Counter(o["color"] for o in items)
        # nine colours allowed per shape in training, each equally likely: a chi-square test of uniformity
        # (8 degrees of freedom; 26.1 is the 0.1% critical value)
        assert len(colours) == 9
        expected = len(items) / 9
        assert sum((n - expected) ** 2 / expected for n in colours.values()) < 26.1, (shape, colours)


def test_pictures_show_the_planned_colours():
    rng = random.Random(2)
    picture = plan_shapes(rng, ("square", "circle"), n_objects=1)
    image = render_shapes(picture, 64)
    obj = picture["objects"][0]
    centre = image.getpixel((int(obj["x"] * 64), int(obj["y"] * 64)))
    from nanovlm.data.synth import COLORS
    assert max(abs(a - b) for a, b in zip(centre, COLORS[obj["color"]])) <= 2
    corner_far = image.getpixel((0, 0)) if obj["x"] > 0.3 or obj["y"] > 0.3 else image.getpixel((63, 63))
    assert corner_far == tuple(picture["background"])


def test_every_shape_draws_a_distinct_mask():
    masks = {}
    for shape in ALL_SHAPES:
        picture = {"background": (0, 0, 0), "objects": [{"shape": shape, "color": "white", "x": 0.5, "y": 0.5,
                                                         "radius": 0.4, "angle": 0.0, "aspect": 0.5, "mirror": False}]}
        masks[shape] = render_shapes(picture, 32).convert("L").tobytes()
        assert sum(masks[shape]) > 0, shape
    assert len(set(masks.values())) == len(ALL_SHAPES)


def test_shape_sets_and_bad_names():
    assert check_shapes("geometric") == GEOMETRIC and check_shapes("silhouettes") == SILHOUETTES
    assert check_shapes("circle, star") == ("circle", "star")
    for bad in ("blob", "circle", "circle,blob", ""):
        with pytest.raises(ConfigError):
            check_shapes(bad)


def test_no_record_asks_shape_and_colour_of_one_object():
    rng = random.Random(5)
    for _ in range(300):
        picture = plan_shapes(rng)
        questions = ask_shapes_questions(picture, rng)
        asked = [q for q in questions if q["type"] in ("shape", "color")]
        assert len(asked) == len(picture["objects"])


def test_per_thing_both_asks_shape_and_colour_of_every_object(tmp_path):
    rng = random.Random(5)
    for _ in range(100):
        picture = plan_shapes(rng)
        questions = ask_shapes_questions(picture, rng, per_thing="both")
        for kind, key in (("shape", "shape"), ("color", "color")):
            answers = sorted(q["assistant"] for q in questions if q["type"] == kind)
            assert answers == sorted(o[key] for o in picture["objects"])
    make_shapes(tmp_path, n=20, image_size=32, seed=1, progress=False, objects="1", questions="shape,color",
                per_thing="both")
    for record in fmt.read_records(tmp_path):
        thing = record["meta"]["objects"][0]
        assert sorted(t["assistant"] for t in record["texts"]) == sorted([thing["shape"], thing["color"]])


def test_per_thing_apart_asks_both_in_two_conversations_that_never_name_an_answer(tmp_path):
    make_shapes(tmp_path, n=60, image_size=32, seed=2, progress=False, per_thing="apart")
    both = tmp_path / "both"
    make_shapes(both, n=60, image_size=32, seed=2, progress=False, per_thing="both")
    records, asked_both = fmt.read_records(tmp_path), fmt.read_records(both)
    assert len(records) == 2 * len(asked_both)                        # two conversations per picture
    for first, second, same in zip(records[::2], records[1::2], asked_both):
        assert first["id"] == same["id"] + "-a" and second["id"] == same["id"] + "-b"
        assert first["images"] == second["images"] == same["images"] and first["split"] == second["split"]
        # the same questions as "both", each once
        assert sorted(map(str, first["texts"] + second["texts"])) == sorted(map(str, same["texts"]))
        assert {q["type"] for q in first["meta"]["questions"]} <= {"color", "count"}
        assert {q["type"] for q in second["meta"]["questions"][:-1]} <= {"shape"}
        for record in (first, second):
            said = ""
            for turn in record["texts"]:
                assert f" {turn['assistant']} " not in said, (record["id"], turn)   # nothing to copy
                said += f" {turn['user'].rstrip('?')} {turn['assistant']} "
    # the pictures are those of the other modes
    assert (tmp_path / records[0]["images"][0]).read_bytes() == (both / records[0]["images"][0]).read_bytes()


def test_scorer_reports_each_attribute_and_heldout_combinations():
    scorer = get_scorer("shapes")
    items = [Item(id=str(k), images=[], question="q", reference=ref, meta={"type": t, "heldout_combo": h})
             for k, (t, ref, h) in enumerate([("shape", "circle", False), ("shape", "star", True),
                                              ("color", "red", False), ("count", "two", True)])]
    answers = ["A circle.", "circle", "Red", "2"]
    scores = [scorer.score(a, i) for a, i in zip(answers, items)]
    summary = scorer.summarize(scores, items)
    assert summary["shape_accuracy"] == 0.5 and summary["color_accuracy"] == 1.0 and summary["count_accuracy"] == 1.0
    assert summary["by_combination"]["held-out combination"] == {"n": 2, "accuracy": 0.5}
    assert summary["by_attribute_and_combination"]["shape / held out"]["accuracy"] == 0.0


def test_linear_probe_separates_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=g)
    informative = torch.nn.functional.one_hot(labels, 4).float() * 3 + torch.randn(300, 4, generator=g)
    assert linear_probe_accuracy(informative, labels, 4) > 0.9
    noise = torch.randn(300, 8, generator=g)
    assert linear_probe_accuracy(noise, labels, 4) < 0.45


def test_probe_and_grad_norms_run_on_a_tiny_model():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    result = ShapeProbe(cfg.vision, n=60, shapes="geometric")(model)
    assert set(result) == {"probe_shape", "probe_color"} and all(0 <= v <= 1 for v in result.values())
    assert model.training     # the probe puts the encoder back in training mode
    ids = torch.randint(0, 100, (2, cfg.image_tokens_per_image + 8))
    ids[:, : cfg.image_tokens_per_image] = cfg.image_token_id
    labels = ids.roll(-1, 1)
    labels[:, : cfg.image_tokens_per_image] = -100
    images = torch.randn(2, 3, 32, 32)
    _, loss = model(ids, images, labels=labels)
    loss = loss + image_text_contrastive(model, ids, images, labels)
    loss.backward()
    norms = grad_norms(model)
    assert set(norms) == {"grad_norm_vision", "grad_norm_projector", "grad_norm_decoder"}
    assert all(v > 0 for v in norms.values())


def test_contrastive_loss_prefers_matching_pairs():
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    images = torch.randn(4, 3, 32, 32)
    ids = torch.randint(0, 100, (4, cfg.image_tokens_per_image + 8))
    ids[:, : cfg.image_tokens_per_image] = cfg.image_token_id
    loss = image_text_contrastive(model, ids, images)
    assert torch.isfinite(loss) and loss > 0
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        image_text_contrastive(model, ids, images).backward()
        optimizer.step()
    assert image_text_contrastive(model, ids, images) < 0.5 * loss


def test_train_logs_probe_and_grad_norms(tmp_path, dataset, monkeypatch):
    from nanovlm import probe
    from nanovlm.train import TrainConfig, train

    monkeypatch.setattr(probe, "PROBE_PICTURES", 90)

    out = tmp_path / "run"
    train(TrainConfig(preset="tiny", data=str(dataset), out=str(out), steps=4, batch_size=4, eval_every=4,
                      eval_batches=1, probe_every=2, contrastive_weight=0.5, progress=False, threads=1,
                      model={"decoder.max_seq_len": 256}))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("grad_norm_vision" in r for r in lines)
    assert [r["step"] for r in lines if "probe_shape" in r] == [2, 4]


def test_contrastive_warmup_step_trains_the_encoder_and_leaves_the_decoder_blocks_alone():
    from nanovlm.train import Runtime, TrainConfig, train_step

    torch.manual_seed(0)
    cfg = tiny_config()
    model = VisionLanguageModel(cfg)
    ids = torch.randint(0, 100, (4, cfg.image_tokens_per_image + 8))
    ids[:, : cfg.image_tokens_per_image] = cfg.image_token_id
    labels = ids.roll(-1, 1)
    labels[:, : cfg.image_tokens_per_image] = -100
    batch = {"input_ids": ids, "labels": labels, "images": torch.randn(4, 3, 32, 32)}
    tcfg = TrainConfig(steps=10, contrastive_warmup_steps=5, precision="fp32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, _ = train_step(model, optimizer, scaler, iter([batch]), tcfg, Runtime(), contrastive_only=True)
    assert 0 < loss < 10                                            # the contrastive loss of 4 pairs (ln 4 at chance)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("vision.") for k in changed) and any(k.startswith("projector.") for k in changed)
    assert "decoder.tok_emb.weight" in changed                      # the text side of the contrastive loss
    assert not any(k.startswith("decoder.blocks.") for k in changed)


def test_contrastive_warmup_steps_are_checked():
    from nanovlm.train import TrainConfig

    with pytest.raises(ConfigError, match="fewer than steps"):
        TrainConfig(steps=100, contrastive_warmup_steps=100)
    with pytest.raises(ConfigError, match="pack"):
        TrainConfig(contrastive_warmup_steps=10, pack=True)


def test_contrastive_refuses_packed_rows():
    from nanovlm.train import TrainConfig

    with pytest.raises(ConfigError, match="pack"):
        TrainConfig(contrastive_weight=0.5, pack=True)
    with pytest.raises(ConfigError, match="contrastive_weight"):
        TrainConfig(contrastive_weight=-1)


def test_cli_writes_shapes_and_scores_them(tmp_path, capsys):
    out = tmp_path / "data"
    assert cli.main(["data", "shapes", "--out", str(out), "--n", "12", "--image-size", "32", "--shapes",
                     "geometric"]) == 0
    assert "held out of training" in capsys.readouterr().out
    shapes = {o["shape"] for r in fmt.read_records(out) for o in r["meta"]["objects"]}
    assert shapes <= set(GEOMETRIC)
    assert cli.main(["data", "shapes", "--out", str(out), "--n", "3"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_efficientnet_stem_config():
    cfg = from_name("demo", {"vision.patch_stem": "efficientnet_lite0", "vision.image_size": 128,
                             "vision.patch_size": 16, "vision.n_layer": 0, "vision.use_cls": False})
    model = VisionLanguageModel(cfg)
    assert model.vision(torch.randn(1, 3, 128, 128)).shape == (1, 64, cfg.vision.width)
    with pytest.raises(ConfigError, match="2, 4, 8, 16 or 32"):
        from_name("demo", {"vision.patch_stem": "efficientnet_lite0", "vision.patch_size": 64,
                           "vision.image_size": 128})


def _effnet_model(patch_size=8):
    cfg = from_name("demo", {"vision.patch_stem": "efficientnet_lite0", "vision.image_size": 64,
                             "vision.patch_size": patch_size, "vision.n_layer": 0, "vision.use_cls": False})
    return VisionLanguageModel(cfg)


def test_efficientnet_stem_runs_channels_last_with_the_same_numbers():
    torch.manual_seed(0)
    stem = _effnet_model().vision.patch_stem.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = stem(images)
        x = torch.nn.functional.relu6(stem._bn0(stem._conv_stem(images)))   # the same layers, default layout
        for block in stem._blocks:
            x = block(x)
        reference = stem.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def test_stem_trainable_blocks_fixes_only_the_early_blocks():
    from nanovlm.train import build_optimizer, check_stem_trainable_blocks
    model = _effnet_model()                      # patch 8: the stem conv + 5 blocks
    stem = model.vision.patch_stem
    assert len(stem._blocks) == 5
    optimizer = build_optimizer(model, TrainConfig(stem_trainable_blocks=2))
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    fixed = [stem._conv_stem, stem._bn0, *stem._blocks[:3]]
    moving = [*stem._blocks[3:], stem.proj, model.projector, model.decoder]
    assert all(not p.requires_grad and id(p) not in trained for m in fixed for p in m.parameters())
    assert all(p.requires_grad and id(p) in trained for m in moving for p in m.parameters())
    # a training step's gradient stops at the first trainable block
    images = torch.randn(2, 3, 64, 64)
    model.vision(images).square().mean().backward()
    assert all(p.grad is None for m in fixed for p in m.parameters())
    assert all(p.grad is not None for p in stem._blocks[3].parameters())
    # 0: only the fresh 1 x 1 map of the stem trains
    model = _effnet_model()
    build_optimizer(model, TrainConfig(stem_trainable_blocks=0))
    assert [n for n, p in model.vision.patch_stem.named_parameters() if p.requires_grad] == ["proj.weight", "proj.bias"]
    with pytest.raises(ConfigError, match="runs 5 blocks at vision.patch_size=8"):
        check_stem_trainable_blocks(model.cfg, 6)
    with pytest.raises(ConfigError, match="not to vision.patch_stem=resnet"):
        check_stem_trainable_blocks(from_name("demo", {"vision.patch_stem": "resnet"}), 1)
    with pytest.raises(ConfigError, match="freeze=vision fixes all of it"):
        TrainConfig(stem_trainable_blocks=1, freeze=["vision"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        TrainConfig(stem_trainable_blocks=-1)
