"""GRPOConfig: TRL's names and defaults, and errors that say which field is wrong and what to do."""

import dataclasses
import importlib.util

import pytest
import torch

from aha import devices
from aha.train.config import GRPOConfig

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def error(**kwargs) -> str:
    with pytest.raises(ValueError) as err:
        GRPOConfig(**kwargs)
    return str(err.value)


def test_defaults_are_trls():
    cfg = GRPOConfig()
    assert cfg.epsilon == 0.2
    assert cfg.beta == 0.0
    assert cfg.loss_type == "dapo"
    assert cfg.num_generations == 8
    assert cfg.temperature == 1.0
    assert cfg.scale_rewards == "group"
    assert cfg.learning_rate == 1e-6
    assert cfg.per_device_train_batch_size == 8
    assert cfg.num_iterations == 1
    assert cfg.top_p == 1.0 and cfg.top_k == 0 and cfg.min_p is None
    assert cfg.importance_sampling_level == "token"
    assert cfg.epsilon_high is None


FIELDS_AS_TRL = [
    "epsilon",
    "beta",
    "loss_type",
    "num_generations",
    "temperature",
    "scale_rewards",
    "learning_rate",
    "per_device_train_batch_size",
    "num_iterations",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "epsilon_high",
    "delta",
    "importance_sampling_level",
    "mask_truncated_completions",
    "top_entropy_quantile",
    "use_bias_correction_kl",
    "vllm_mode",
    "seed",
    "max_grad_norm",
    "lr_scheduler_type",
]


def test_defaults_match_installed_trl():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"defaults are TRL 1.16's, trl {trl.__version__} is installed")
    theirs = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    ours = GRPOConfig()
    for name in FIELDS_AS_TRL:
        assert getattr(ours, name) == theirs[name], name


def test_derived_generation_batch():
    cfg = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=3, num_generations=4)
    assert cfg.steps_per_generation == 3
    assert cfg.generation_batch_size == 12
    assert cfg.prompts_per_generation == 3
    cfg = GRPOConfig(per_device_train_batch_size=6, num_generations=4, steps_per_generation=2)
    assert cfg.generation_batch_size == 12 and cfg.prompts_per_generation == 3


def test_num_generations_must_be_at_least_two():
    msg = error(num_generations=1, per_device_train_batch_size=1)
    assert "num_generations" in msg


def test_generation_batch_must_hold_whole_groups():
    msg = error(per_device_train_batch_size=6, num_generations=4)
    assert "generation_batch_size" in msg and "num_generations" in msg
    assert "(4)" in msg and "got 6" in msg
    msg = error(generation_batch_size=10, num_generations=4, per_device_train_batch_size=2)
    assert "generation_batch_size" in msg and "num_generations" in msg
    # the same batch, accumulated over two steps, is fine
    assert GRPOConfig(per_device_train_batch_size=6, num_generations=4, gradient_accumulation_steps=2)


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"'num_generation'.*did you mean 'num_generations'"):
        GRPOConfig.from_dict({"num_generation": 4})
    with pytest.raises(ValueError, match=r"'learnin_rate'.*did you mean 'learning_rate'"):
        GRPOConfig.from_dict({"learnin_rate": 1e-5})
    with pytest.raises(ValueError, match="'zzzz'"):
        GRPOConfig.from_dict({"zzzz": 1})


def test_from_dict_round_trips():
    cfg = GRPOConfig.from_dict({"num_generations": 4, "learning_rate": 1e-5, "loss_type": "grpo"})
    assert (cfg.num_generations, cfg.learning_rate, cfg.loss_type) == (4, 1e-5, "grpo")
    assert GRPOConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", "fast"),
        ("num_generations", 2.5),
        ("bf16", "yes"),
        ("num_generations", True),
        ("temperature", None),
        ("loss_type", 1),
        ("report_to", 3),
    ],
)
def test_wrong_types_name_the_field(field, value):
    msg = error(**{field: value})
    assert f"GRPOConfig.{field}" in msg and repr(value) in msg
    with pytest.raises(ValueError, match=f"GRPOConfig.{field}"):
        GRPOConfig.from_dict({field: value})


def test_ints_are_accepted_for_floats():
    cfg = GRPOConfig(learning_rate=1, temperature=1, beta=0)
    assert cfg.learning_rate == 1 and cfg.beta == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(loss_type="ppo"), "loss_type"),
        (dict(scale_rewards="std"), "scale_rewards"),
        (dict(importance_sampling_level="seq"), "importance_sampling_level"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(beta=-0.1), "beta"),
        (dict(rollout_backend="vllm"), "rollout_backend"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    msg = error(**kwargs)
    assert f"GRPOConfig.{field}" in msg
    assert repr(kwargs[field]) in msg


def test_accepted_loss_types():
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert GRPOConfig(loss_type=loss_type).loss_type == loss_type


def test_scale_rewards_bool_as_trl():
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"


def test_report_to_string_as_trl():
    assert GRPOConfig(report_to="none").report_to == []
    assert GRPOConfig(report_to=[]).report_to == []
    assert GRPOConfig(report_to="jsonl").report_to == ["jsonl"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_use_vllm_without_vllm_says_how_to_install():
    msg = error(use_vllm=True)
    assert "use_vllm" in msg and "vllm" in msg
    assert "pip install" in msg
    assert "use_vllm=False" in msg


@no_cuda
def test_bf16_on_a_cpu_without_bf16_instructions_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    msg = error(bf16=True)
    assert "GRPOConfig.bf16=True" in msg and "no bf16 instructions" in msg and "bf16=False" in msg
    assert GRPOConfig().bf16 is False  # the default picks what the machine can do
    assert GRPOConfig(bf16=False).bf16 is False


@no_cuda
def test_bf16_on_a_cpu_with_bf16_instructions_is_allowed(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    cfg = GRPOConfig(bf16=True)
    assert cfg.bf16 is True and cfg.mixed_precision == "bf16"
    assert GRPOConfig().mixed_precision == "no"  # None stays fp32 on a CPU: bf16 only when asked for


@no_cuda
def test_fp16_on_cpu_is_a_clear_error(monkeypatch):
    msg = error(fp16=True)
    assert "GRPOConfig.fp16=True" in msg and "CUDA" in msg and "fp16=False" in msg
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert "bf16=True" in error(fp16=True)  # the way to mixed precision on this CPU


def test_bf16_and_fp16_together_are_refused():
    msg = error(bf16=True, fp16=True)
    assert "bf16=True and fp16=True" in msg and "choose one" in msg


EVAL_AND_SYNC_FIELDS = [  # aha.train.grpo's evaluation and reference sync
    "eval_strategy",
    "eval_steps",
    "eval_on_start",
    "per_device_eval_batch_size",
    "num_generations_eval",
    "sync_ref_model",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
]


def test_eval_and_sync_defaults_match_installed_trl():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"defaults are TRL 1.16's, trl {trl.__version__} is installed")
    theirs = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    ours = GRPOConfig()
    for name in EVAL_AND_SYNC_FIELDS:
        assert getattr(ours, name) == theirs[name], name


def test_eval_fields_as_transformers():
    from transformers import IntervalStrategy

    assert GRPOConfig(eval_strategy="steps", logging_steps=7).eval_steps == 7  # unset: logging_steps
    assert GRPOConfig(eval_strategy=IntervalStrategy.EPOCH).eval_strategy == "epoch"
    assert GRPOConfig(eval_strategy="steps", eval_steps=3.0).eval_steps == 3
    assert GRPOConfig(eval_strategy="steps", eval_steps=0.25).eval_steps == 0.25  # a fraction of the run
    assert "eval_strategy" in error(eval_strategy="sometimes")
    assert "eval_steps" in error(eval_strategy="steps", eval_steps=2.5)
    assert "per_device_eval_batch_size" in error(eval_strategy="steps", per_device_eval_batch_size=6)
    assert GRPOConfig(eval_strategy="steps", per_device_eval_batch_size=6, num_generations_eval=3)
    assert "num_generations_eval" in error(num_generations_eval=0)


def test_sync_ref_model_needs_beta():
    msg = error(sync_ref_model=True)
    assert "sync_ref_model" in msg and "beta" in msg
    assert GRPOConfig(sync_ref_model=True, beta=0.04).ref_model_sync_steps == 512
    assert "ref_model_mixup_alpha" in error(sync_ref_model=True, beta=0.1, ref_model_mixup_alpha=1.5)
