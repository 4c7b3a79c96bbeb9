import os

import pytest
import torch

os.environ.setdefault("AHA_NO_PROGRESS", "1")
torch.set_num_threads(2)


@pytest.fixture
def small_tiny():
    """A very small randomly initialised tiny model + tokenizer (fast enough for unit tests)."""
    from aha.models.tiny import build_tiny

    return build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)


@pytest.fixture
def model_dir(tmp_path, small_tiny) -> str:
    """`small_tiny` saved with ``save_pretrained`` (model and tokenizer), for commands that take a path."""
    model, tok = small_tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")
