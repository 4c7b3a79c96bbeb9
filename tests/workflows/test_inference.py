"""Loading a model to sample from it: --dtype's choices, auto's rule, bf16 refused where the CPU would emulate it."""

import pytest
import torch

import aha.devices
from aha.workflows.inference import DTYPES, check_dtype, load_for_inference, native_dtype

WITH_BF16 = frozenset({"avx512f", "avx512_bf16"})


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: WITH_BF16)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(aha.devices.platform, "system", lambda: "Linux")  # not Apple silicon either


def test_dtype_changes_the_loaded_model(model_dir, bf16_cpu):
    assert DTYPES == ("auto", "float32", "bfloat16")
    assert load_for_inference(model_dir, "bfloat16", "cpu")[0].dtype == torch.bfloat16
    assert load_for_inference(model_dir, "float32", "cpu")[0].dtype == torch.float32
    model, tok = load_for_inference(model_dir, "auto", "cpu")  # the checkpoint's own (float32)
    assert model.dtype == torch.float32 and not model.training and tok.pad_token_id is not None


def test_bf16_refused_on_a_cpu_without_it(model_dir, no_bf16_cpu):
    with pytest.raises(ValueError, match="--dtype bfloat16: this CPU has no bf16 instructions.*--dtype float32"):
        load_for_inference(model_dir, "bfloat16", "cpu")
    with pytest.raises(ValueError, match="--dtype must be one of auto, float32, bfloat16, got 'float16'"):
        check_dtype("float16", "cpu")


def test_auto_keeps_a_bf16_checkpoint_only_where_it_runs_natively(tmp_path, small_tiny, monkeypatch):
    model, tok = small_tiny
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tok.save_pretrained(tmp_path / "bf16")
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: WITH_BF16)
    assert load_for_inference(tmp_path / "bf16", "auto", "cpu")[0].dtype == torch.bfloat16
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(aha.devices.platform, "system", lambda: "Linux")
    assert load_for_inference(tmp_path / "bf16", "auto", "cpu")[0].dtype == torch.float32
    assert native_dtype(torch.float16, "cpu") == torch.float32  # fp16 on a CPU: emulated
    assert native_dtype(torch.float32, "cpu") == torch.float32


def test_an_adapter_is_merged(model_dir, tmp_path, bf16_cpu):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from aha.models.loading import peft_model

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    model, _ = load_for_inference(tmp_path / "adapter", "bfloat16", "cpu")
    assert not hasattr(model, "peft_config") and model.dtype == torch.bfloat16
