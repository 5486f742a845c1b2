"""benchmarks/form_probe.py oracle: coded pictures that hold each thing's shape and colour in one patch."""
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nanovlm.data.shapes import ALL_COLORS, ALL_SHAPES, make_shapes

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "form_probe.py"
spec = importlib.util.spec_from_file_location("form_probe", SCRIPT)
form_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(form_probe)


def _decode(patch: np.ndarray, channel: int, first_row: int, names) -> str:
    """The name whose Hadamard row matches the patch's channel (+-1 correlation = 64 only for its own row)."""
    signs = np.where(patch[:, :, channel].reshape(-1) > 127, 1, -1)
    rows = form_probe.hadamard(64)[first_row:first_row + len(names)]
    return names[int(np.argmax(rows @ signs))]


def test_oracle_pictures_hold_every_things_shape_and_colour(tmp_path):
    make_shapes(tmp_path / "shapes", n=30, image_size=64, seed=0, progress=False)
    args = argparse.Namespace(data=str(tmp_path / "shapes"), out=str(tmp_path / "oracle"), overwrite=False)
    form_probe.run_oracle(args)
    records = [json.loads(line) for line in open(tmp_path / "oracle" / "records.jsonl")]
    assert len(records) == 30
    for record in records:
        picture = np.asarray(Image.open(tmp_path / "oracle" / record["images"][0]))
        cells = {(y // 8, x // 8) for y, x in zip(*np.nonzero(picture[:, :, 2]))}
        things = record["meta"]["objects"]
        assert len(cells) == len(things)                      # one patch per thing, even when centres collide
        found = set()
        for cy, cx in cells:
            patch = picture[cy * 8:cy * 8 + 8, cx * 8:cx * 8 + 8]
            found.add((_decode(patch, 0, form_probe.SHAPE_ROW, ALL_SHAPES),
                       _decode(patch, 1, form_probe.COLOUR_ROW, ALL_COLORS)))
        assert found == {(t["shape"], t["color"]) for t in things}


def test_oracle_refuses_bad_input_and_keeps_existing_output(tmp_path):
    args = argparse.Namespace(data=str(tmp_path / "none"), out=str(tmp_path / "o"), overwrite=False)
    with pytest.raises(ValueError, match="has no records.jsonl"):
        form_probe.run_oracle(args)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    make_shapes(tmp_path / "shapes", n=4, image_size=64, seed=0, progress=False)
    args.data = str(tmp_path / "shapes")
    with pytest.raises(ValueError, match="pass --overwrite"):
        form_probe.run_oracle(args)
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"
    args.out = args.data
    with pytest.raises(ValueError, match="must not be the --data folder"):
        form_probe.run_oracle(args)
    (tmp_path / "file").write_text("x")
    args.out = str(tmp_path / "file")
    with pytest.raises(ValueError, match="is a file"):
        form_probe.run_oracle(args)
    args.out, args.overwrite = str(tmp_path / "o"), True
    form_probe.run_oracle(args)
    assert not (tmp_path / "o" / "mine.txt").exists() and (tmp_path / "o" / "records.jsonl").is_file()


def test_oracle_from_the_command_line_is_one_error_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(SCRIPT), "oracle", "--data", str(tmp_path / "none"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'none'} has no records.jsonl: give a folder "
                                                "written by `nanovlm data shapes`"]
    assert not (tmp_path / "o").exists()
