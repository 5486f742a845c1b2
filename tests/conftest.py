import pytest
import torch

from nanovlm.config import from_name


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
