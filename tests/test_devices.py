import torch

from aha import devices


def test_cpu_bf16_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert devices.bf16_supported("cpu")
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(devices.platform, "system", lambda: "Linux")
    assert not devices.bf16_supported("cpu")
    assert "no bf16 instructions" in devices.bf16_refusal("cpu")


def test_cuda_bf16_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not devices.bf16_supported("cuda")
    assert not devices.bf16_supported("meta")
