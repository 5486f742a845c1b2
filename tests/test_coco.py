import json
import os
import warnings

import pytest
from PIL import Image

from nanovlm.data.coco import import_coco
from nanovlm.data.format import DatasetFormatError, load_image, read_records

N_IMAGES = 12


def coco_json(n_images=N_IMAGES, captions_per_image=5, extra_annotations=()):
    """A captions file in COCO's exact shape (info, licenses, images, annotations)."""
    images = [{"license": 1, "file_name": f"{image_id:012d}.jpg", "coco_url": f"http://images.cocodataset.org/"
               f"val2017/{image_id:012d}.jpg", "height": 24, "width": 32, "date_captured": "2013-11-14 17:02:52",
               "flickr_url": "http://farm.example/x.jpg", "id": image_id}
              for image_id in range(100, 100 + n_images)]
    annotations = []
    for k in range(captions_per_image):   # COCO interleaves captions of different images
        for image in images:
            annotations.append({"image_id": image["id"], "id": 1000 + len(annotations),
                                "caption": f" A photo {image['id']}  caption {k}.\n"})
    return {"info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}],
            "images": images, "annotations": annotations + list(extra_annotations)}


@pytest.fixture
def coco(tmp_path):
    images_dir = tmp_path / "val2017"
    images_dir.mkdir()
    data = coco_json()
    for image in data["images"]:
        Image.new("RGB", (32, 24), (image["id"] % 256, 80, 160)).save(images_dir / image["file_name"])
    annotations = tmp_path / "captions_val2017.json"
    annotations.write_text(json.dumps(data))
    return annotations, images_dir, tmp_path / "out"


def test_import_writes_one_record_per_image(coco):
    annotations, images_dir, out = coco
    stats = import_coco(annotations, images_dir, out, test_size=2, val_fraction=0.25, progress=False)
    records = read_records(out)
    assert len(records) == N_IMAGES == stats["images"] and stats["captions"] == 5 * N_IMAGES
    assert stats["splits"]["test"] == 2 and sum(stats["splits"].values()) == N_IMAGES
    assert stats["skipped_annotations"] == 0 and stats["missing_images"] == 0
    first = next(r for r in records if r["id"] == "coco-100")
    assert first["texts"] == [{"user": "Describe the picture.", "assistant": "A photo 100 caption 0."}]
    assert first["meta"] == {"coco_id": 100, "captions": [f"A photo 100 caption {k}." for k in range(5)]}
    assert first["images"] == ["images/000000000100.jpg"]
    assert load_image(out, first["images"][0]).size == (32, 24)
    assert not (out / first["images"][0]).is_symlink()


def test_splits_are_deterministic_per_seed(coco, tmp_path):
    annotations, images_dir, out = coco
    def splits(seed, folder):
        import_coco(annotations, images_dir, folder, seed=seed, test_size=3, val_fraction=0.3, progress=False)
        return {r["id"]: r["split"] for r in read_records(folder)}
    first = splits(0, tmp_path / "a")
    assert first == splits(0, tmp_path / "b")
    assert first != splits(1, tmp_path / "c")
    assert set(first.values()) == {"train", "val", "test"}
    assert (tmp_path / "a" / "records.jsonl").read_bytes() == (tmp_path / "b" / "records.jsonl").read_bytes()


def test_symlink_mode_links_instead_of_copying(coco):
    annotations, images_dir, out = coco
    import_coco(annotations, images_dir, out, test_size=1, image_mode="symlink", progress=False)
    link = out / "images" / "000000000100.jpg"
    assert link.is_symlink() and os.path.samefile(link, images_dir / "000000000100.jpg")
    assert len(read_records(out)) == N_IMAGES


def test_unknown_image_ids_are_skipped_with_a_warning(coco):
    annotations, images_dir, out = coco
    data = coco_json(extra_annotations=[{"image_id": 999, "id": 1, "caption": "lost"},
                                        {"image_id": 998, "id": 2, "caption": "lost too"}])
    data["images"].append({"id": 500, "file_name": "uncaptioned.jpg", "height": 1, "width": 1})
    annotations.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"skipped 2 annotation\(s\) whose image_id is not in"):
        stats = import_coco(annotations, images_dir, out, test_size=1, progress=False)
    assert stats["skipped_annotations"] == 2 and stats["images_without_captions"] == 1
    assert len(read_records(out)) == N_IMAGES


def test_missing_image_is_an_error_unless_skipped(coco):
    annotations, images_dir, out = coco
    (images_dir / "000000000103.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"1 of 12 captioned images are missing.*000000000103\.jpg"):
        import_coco(annotations, images_dir, out, test_size=1, progress=False)
    assert not out.exists() or not (out / "records.jsonl").exists()
    with pytest.warns(UserWarning, match="skipped 1 missing image"):
        stats = import_coco(annotations, images_dir, out, test_size=1, missing_images="skip", progress=False)
    assert stats["missing_images"] == 1 and "coco-103" not in {r["id"] for r in read_records(out)}


def test_missing_and_malformed_annotation_files(coco, tmp_path):
    annotations, images_dir, out = coco
    with pytest.raises(DatasetFormatError, match="nope.json: annotations file not found"):
        import_coco(tmp_path / "nope.json", images_dir, out, progress=False)
    annotations.write_text('{"images": [\n  {"id": 1,\n')
    with pytest.raises(DatasetFormatError, match=r"captions_val2017\.json line 3: not valid JSON"):
        import_coco(annotations, images_dir, out, progress=False)
    annotations.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DatasetFormatError, match="not a COCO captions file"):
        import_coco(annotations, images_dir, out, progress=False)
    data = coco_json()
    del data["annotations"][4]["caption"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"annotations\[4\] needs \"image_id\" and a string \"caption\""):
        import_coco(annotations, images_dir, out, progress=False)
    data = coco_json()
    data["images"][2]["file_name"] = "../escape.jpg"
    annotations.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"images\[2\] file_name '../escape.jpg'"):
        import_coco(annotations, images_dir, out, progress=False)
    with pytest.raises(DatasetFormatError, match="image folder not found"):
        import_coco(annotations, tmp_path / "no_images", out, progress=False)


def test_bad_arguments_and_existing_output(coco):
    annotations, images_dir, out = coco
    with pytest.raises(ValueError, match="test_size"):
        import_coco(annotations, images_dir, out, test_size=N_IMAGES, progress=False)
    with pytest.raises(ValueError, match="image_mode"):
        import_coco(annotations, images_dir, out, image_mode="move", progress=False)
    import_coco(annotations, images_dir, out, test_size=1, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        import_coco(annotations, images_dir, out, test_size=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a clean file imports without warnings
        import_coco(annotations, images_dir, out, test_size=1, image_mode="symlink", overwrite=True, progress=False)
    assert (out / "images" / "000000000100.jpg").is_symlink()
