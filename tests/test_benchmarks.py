"""The benchmarks' FLOP counts, model sizes, options and workloads (benchmarks/_common.py, grpo_vs_trl.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402
import grpo_vs_trl  # noqa: E402

DIMS = {"params": 1000, "adapter": 0, "trainable": 1000, "layers": 2, "hidden": 8, "attn_width": 8}


def test_full_fine_tuning_floor_is_6n_per_token_and_group_1_counts_the_prompt_per_row():
    f = _common.step_flops(DIMS, rows=4, prompt_len=3, completion_len=5)
    tokens, attn = 4 * 8, _common.attention_flops(DIMS, 4 * _common.causal_pairs(8))
    assert f["generate"] == 2 * 1000 * tokens + attn
    assert f["train"] == 6 * 1000 * tokens + 3 * attn


def test_lora_floor_counts_activation_gradients_through_the_frozen_base_but_no_weight_gradients():
    lora = dict(DIMS, adapter=10, trainable=10)
    f = _common.step_flops(lora, rows=4, prompt_len=3, completion_len=5)
    tokens, attn = 4 * 8, _common.attention_flops(lora, 4 * _common.causal_pairs(8))
    assert f["train"] == (4 * 1010 + 2 * 10) * tokens + 3 * attn  # 4·(N+A) + 2·A, not 6·N
    assert f["generate"] == 2 * 1000 * tokens + attn  # the adapter merged: base weights only
    assert f["train"] < _common.step_flops(DIMS, rows=4, prompt_len=3, completion_len=5)["train"]


def test_the_floor_runs_each_prompt_once_per_group():
    f = _common.step_flops(DIMS, rows=8, prompt_len=3, completion_len=5, group=4)
    tokens = 2 * 3 + 8 * 5
    pairs = 2 * _common.causal_pairs(3) + 8 * (5 * 3 + _common.causal_pairs(5))
    attn = _common.attention_flops(DIMS, pairs)
    assert f["generate"] == 2 * 1000 * tokens + attn
    with pytest.raises(ValueError, match="group 3 must be >= 1 and divide rows 8"):
        _common.step_flops(DIMS, rows=8, prompt_len=3, completion_len=5, group=3)


def test_model_dims_separates_base_and_lora_adapter(small_tiny):
    from peft import get_peft_model

    model, _ = small_tiny
    base = _common.model_dims(model)
    assert base["adapter"] == 0 and base["trainable"] == base["params"] > 0
    assert base["attn_width"] == model.config.num_attention_heads * (model.config.hidden_size // 2)
    peft_model = get_peft_model(model, _common.lora_config(4))
    dims = _common.model_dims(peft_model)
    assert dims["params"] == base["params"]
    assert dims["adapter"] == dims["trainable"] > 0
    cfg = _common.lora_config(4)
    assert (cfg.r, cfg.lora_alpha, cfg.target_modules) == (4, 8, "all-linear")


def test_gemm_peak_measures_the_dtype_asked_for(monkeypatch):
    seen = []
    real_mm = torch.mm

    def mm(a, b):
        seen.append(a.dtype)
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    assert _common.gemm_peak(n=32, reps=1, rounds=1, dtype=torch.bfloat16) > 0
    assert set(seen) == {torch.bfloat16}


def test_dtypes_option():
    assert _common.dtypes("both") == ["float32", "bfloat16"]
    assert _common.dtypes("bfloat16") == ["bfloat16"]
    with pytest.raises(SystemExit, match="choose float32, bfloat16 or both"):
        _common.dtypes("fp16")


def test_smoltldr_workload_is_the_recipes_setting_without_hub_data():
    wl = grpo_vs_trl.WORKLOADS["smoltldr"]
    assert grpo_vs_trl.completions_per_step(wl) == 16  # 8 per device × 2 accumulation steps
    assert wl["max_completion_length"] == 96
    data = grpo_vs_trl.workload_dataset(wl)
    assert data.column_names == ["prompt"]  # no ideal_length column to collide with the reward's parameter
    assert data[0]["prompt"][-1]["role"] == "user" and "Summarize" in data[0]["prompt"][-1]["content"]
    assert grpo_vs_trl.completions_per_step(grpo_vs_trl.WORKLOADS["demo"]) == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads", "nope"], "unknown workload 'nope'"),
        (["--lora-r", "0"], "--lora-r 0: must be >= 1"),
        (["--model", "/nonexistent/model"], "not a directory"),
        (["--sizes", "7b"], "unknown size '7b'"),
    ],
)
def test_grpo_vs_trl_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        grpo_vs_trl.main(argv)
    assert message in capsys.readouterr().err


def test_generate_times_each_backend_and_counts_the_cores_it_kept_busy():
    import generate
    from aha.rollout.sampler import sample_fast

    case = dict(model=None, size="1m", dtype="float32", peft="none", lora_r=16)
    res = generate.run_case(case, batch=4, new_tokens=3, reps=2, backends={"fast": sample_fast})
    st = res["stats"]["fast"]
    assert res["tokens"] == 12 and st["median"] > 0
    assert 0.0 < st["busy"] <= torch.get_num_threads() + 0.5  # CPU seconds per wall second of the timed reps
