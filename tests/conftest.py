import pytest
import torch

from nanovlm.config import from_name
from nanovlm.data.synth import make_scenes


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def tiny_config(name="tiny", **overrides):
    """A preset with special-token ids set as a tokenizer would (last ids of the vocabulary)."""
    cfg = from_name(name).with_overrides(overrides) if overrides else from_name(name)
    vocab = cfg.decoder.vocab_size
    cfg.image_token_id, cfg.eos_token_id, cfg.pad_token_id = vocab - 1, vocab - 2, vocab - 3
    return cfg


@pytest.fixture(scope="session")
def small_scenes(tmp_path_factory):
    """40 scenes at 32 px, shared read-only by the tests that only read a dataset."""
    folder = tmp_path_factory.mktemp("small_scenes")
    make_scenes(folder, n=40, style="short", image_size=32, seed=0, progress=False)
    return folder
