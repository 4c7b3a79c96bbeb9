"""Every field of TRL 1.16's GRPOConfig is in aha.GRPOConfig, with TRL's default, and is either honoured (each with
the test below, or elsewhere, that shows its effect) or refused with one clear error when set. docs/trl-config.md is generated from these tables: ``AHA_WRITE_DOCS=1 pytest -k docs``."""

from __future__ import annotations

import ast
import dataclasses
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.train.config import REFUSED, field_defaults

trl = pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "trl-config.md"
HERE = "tests/train/test_trl_fields.py"

# field -> the test that shows its effect ("name" in this file, or "path::name")
HONOURED: dict[str, str] = {
    # run
    "output_dir": "tests/train/test_grpo.py::test_reward_rises_end_to_end",
    "run_name": "test_run_name_names_the_run",
    "seed": "test_data_seed_orders_the_prompts",
    "data_seed": "test_data_seed_orders_the_prompts",
    "full_determinism": "test_full_determinism_turns_on_deterministic_kernels",
    # optimisation
    "learning_rate": "test_scheduler_by_name_with_kwargs_and_fractional_warmup",
    "lr_scheduler_type": "test_scheduler_by_name_with_kwargs_and_fractional_warmup",
    "lr_scheduler_kwargs": "test_scheduler_by_name_with_kwargs_and_fractional_warmup",
    "warmup_steps": "test_scheduler_by_name_with_kwargs_and_fractional_warmup",
    "optim": "test_optim_sgd_trains_with_torch_sgd",
    "optim_args": "test_optim_args_reach_the_optimizer",
    "weight_decay": "test_weight_decay_spares_biases_and_norms",
    "adam_beta1": "test_adam_hyperparameters_reach_adamw",
    "adam_beta2": "test_adam_hyperparameters_reach_adamw",
    "adam_epsilon": "test_adam_hyperparameters_reach_adamw",
    "max_grad_norm": "test_max_grad_norm_clips_and_zero_turns_clipping_off",
    "per_device_train_batch_size": "tests/train/test_grpo.py::test_kl_iterations_and_accumulation",
    "gradient_accumulation_steps": "tests/train/test_grpo.py::test_kl_iterations_and_accumulation",
    "num_train_epochs": "test_num_train_epochs_sets_the_step_count",
    "max_steps": "tests/train/test_grpo.py::test_reward_rises_end_to_end",
    # precision and memory
    "bf16": "tests/train/test_mixed_precision.py::test_grpo_step_runs_the_loss_forward_under_autocast",
    "fp16": "tests/train/test_mixed_precision.py::test_fp16_refused_on_cpu",
    "tf32": "test_tf32_sets_the_matmul_precision",
    "use_cpu": "test_use_cpu_keeps_training_on_the_cpu",
    "gradient_checkpointing": "test_gradient_checkpointing_kwargs_choose_the_layers",
    "gradient_checkpointing_kwargs": "test_gradient_checkpointing_kwargs_choose_the_layers",
    "activation_checkpointing": "test_gradient_checkpointing_kwargs_choose_the_layers",
    "activation_checkpointing_kwargs": "test_gradient_checkpointing_kwargs_choose_the_layers",
    "torch_compile": "test_torch_compile_runs_the_loss_forward_compiled",
    "torch_compile_backend": "test_torch_compile_runs_the_loss_forward_compiled",
    "torch_compile_mode": "test_torch_compile_mode_reaches_torch_compile",
    "use_liger_kernel": "test_use_liger_kernel_applies_transformers_liger_integration",
    "liger_kernel_config": "test_use_liger_kernel_applies_transformers_liger_integration",
    "torch_empty_cache_steps": "test_torch_empty_cache_steps",
    "cast_lm_head_to_fp32": "test_cast_lm_head_to_fp32_computes_the_head_in_fp32",
    "disable_dropout": "test_disable_dropout",
    # logging
    "logging_strategy": "test_logging_strategies_and_fractional_steps",
    "logging_steps": "test_logging_strategies_and_fractional_steps",
    "logging_first_step": "test_logging_strategies_and_fractional_steps",
    "logging_nan_inf_filter": "test_logging_nan_inf_filter",
    "log_level": "test_log_levels_set_transformers_verbosity",
    "log_level_replica": "test_log_levels_set_transformers_verbosity",
    "log_on_each_node": "test_log_levels_set_transformers_verbosity",
    "disable_tqdm": "test_disable_tqdm",
    # checkpoints
    "save_strategy": "test_save_strategies_and_fractional_steps",
    "save_steps": "test_save_strategies_and_fractional_steps",
    "save_total_limit": "tests/train/test_checkpoint.py::test_checkpoint_layout_and_rotation",
    "save_only_model": "test_save_only_model_writes_weights_only_and_cannot_resume",
    "resume_from_checkpoint": "tests/train/test_checkpoint.py::test_resume_in_process_matches_uninterrupted",
    # data
    "shuffle_dataset": "test_shuffle_dataset_and_sequential_sampling",
    "train_sampling_strategy": "test_shuffle_dataset_and_sequential_sampling",
    "dataloader_drop_last": "test_dataloader_drop_last_skips_an_epochs_short_rest",
    # models
    "model_init_kwargs": "test_model_init_kwargs_dtype_and_attention",
    "trust_remote_code": "test_trust_remote_code_reaches_from_pretrained",
    # distributed
    "local_rank": "test_local_rank_must_match_the_launcher",
    "ddp_find_unused_parameters": "test_ddp_fields_become_accelerate_handlers",
    "ddp_bucket_cap_mb": "test_ddp_fields_become_accelerate_handlers",
    "ddp_broadcast_buffers": "test_ddp_fields_become_accelerate_handlers",
    "ddp_static_graph": "test_ddp_fields_become_accelerate_handlers",
    "ddp_backend": "test_ddp_fields_become_accelerate_handlers",
    "ddp_timeout": "test_ddp_fields_become_accelerate_handlers",
    # generation
    "num_generations": "tests/train/test_grpo.py::test_reward_rises_end_to_end",
    "generation_batch_size": "tests/train/test_config.py::test_generation_batch_must_hold_whole_groups",
    "steps_per_generation": "tests/train/test_grpo.py::test_kl_iterations_and_accumulation",
    "num_iterations": "tests/train/test_grpo.py::test_kl_iterations_and_accumulation",
    "max_completion_length": "test_mask_truncated_completions",
    "max_tool_calling_iterations": "tests/rollout/test_tool_loop.py::test_max_iterations_bounds_the_rounds",
    "pad_to_multiple_of": "test_pad_to_multiple_of",
    "temperature": "tests/rollout/test_sampler.py::test_samples_follow_the_processed_distribution",
    "top_p": "tests/rollout/test_sampler.py::test_samples_follow_the_processed_distribution",
    "top_k": "tests/rollout/test_sampler.py::test_samples_follow_the_processed_distribution",
    "min_p": "tests/rollout/test_sampler.py::test_samples_follow_the_processed_distribution",
    "repetition_penalty": "tests/rollout/test_sampler.py::test_greedy_with_repetition_penalty_fast_equals_hf",
    "generation_kwargs": "test_generation_kwargs",
    "chat_template_kwargs": "test_chat_template_kwargs_reach_the_template",
    "cache_implementation": "test_cache_implementation_reaches_generate",
    # the objective
    "beta": "tests/train/test_grpo.py::test_kl_iterations_and_accumulation",
    "epsilon": "tests/grpo/test_core.py::test_clipped_token_has_no_gradient",
    "epsilon_high": "tests/grpo/test_trl_parity.py::test_batch_exercises_every_option",
    "delta": "tests/grpo/test_trl_parity.py::test_batch_exercises_every_option",
    "importance_sampling_level": "tests/grpo/test_trl_parity.py::test_batch_exercises_every_option",
    "use_bias_correction_kl": "tests/grpo/test_trl_parity.py::test_batch_exercises_every_option",
    "scale_rewards": "tests/grpo/test_core.py::test_scale_rewards_batch_and_none",
    "reward_weights": "tests/grpo/test_core.py::test_nan_rewards_advantages",
    "mask_truncated_completions": "test_mask_truncated_completions",
    "top_entropy_quantile": "test_top_entropy_quantile_masks_low_entropy_tokens",
    # console
    "log_completions": "test_log_completions_and_unique_prompts",
    "num_completions_to_print": "test_log_completions_and_unique_prompts",
    "log_unique_prompts": "test_log_completions_and_unique_prompts",
    # vLLM
    "use_vllm": "test_vllm_fields_reach_the_engine",
    "vllm_mode": "test_vllm_fields_reach_the_engine",
    "vllm_server_base_url": "test_vllm_fields_reach_the_engine",
    "vllm_server_host": "test_vllm_fields_reach_the_engine",
    "vllm_server_port": "test_vllm_fields_reach_the_engine",
    "vllm_server_timeout": "test_vllm_fields_reach_the_engine",
    "vllm_gpu_memory_utilization": "test_vllm_fields_reach_the_engine",
    "vllm_max_model_length": "test_vllm_fields_reach_the_engine",
    "vllm_importance_sampling_correction": "test_vllm_fields_reach_the_engine",
    "vllm_model_impl": "test_vllm_fields_reach_the_engine",
    "vllm_importance_sampling_mode": "tests/grpo/test_importance_sampling.py::test_token_truncate_clamps_each_token",
    "vllm_importance_sampling_clip_max": "test_vllm_fields_reach_the_engine",
    "vllm_importance_sampling_clip_min": "tests/grpo/test_importance_sampling.py::test_sequence_mask_zeroes_sequences_outside_the_band",
    "vllm_importance_sampling_cap": "test_vllm_fields_reach_the_engine",
    # merged from main: losses, trackers and the Hub, evaluation and the reference's refresh
    "loss_type": "tests/train/test_grpo_objectives.py::test_new_loss_types_train",
    "multi_objective_aggregation": "tests/train/test_grpo_objectives.py::test_multi_objective_aggregation_in_rollouts",
    "sapo_temperature_neg": "tests/train/test_grpo_objectives.py::test_compute_loss_passes_each_option",
    "sapo_temperature_pos": "tests/train/test_grpo_objectives.py::test_compute_loss_passes_each_option",
    "vespo_k_pos": "tests/train/test_grpo_objectives.py::test_compute_loss_passes_each_option",
    "vespo_lambda_pos": "test_vespo_lambda_pos_and_k_neg_change_the_loss",
    "vespo_k_neg": "test_vespo_lambda_pos_and_k_neg_change_the_loss",
    "vespo_lambda_neg": "tests/train/test_grpo_objectives.py::test_compute_loss_passes_each_option",
    "entropy_coef": "tests/train/test_grpo_objectives.py::test_entropy_bonus_in_compute_loss",
    "use_adaptive_entropy": "tests/train/test_grpo_objectives.py::test_adaptive_entropy_moves_the_coefficient_and_resumes",
    "entropy_coef_min": "test_adaptive_entropy_coefficient_stays_within_its_bounds",
    "entropy_coef_max": "test_adaptive_entropy_coefficient_stays_within_its_bounds",
    "entropy_coef_delta": "tests/train/test_entropy.py::test_adaptive_over_processes_and_resumed",
    "entropy_target": "tests/train/test_entropy.py::test_adaptive_over_processes_and_resumed",
    "off_policy_mask_threshold": "tests/train/test_grpo_objectives.py::test_compute_loss_passes_each_option",
    "report_to": "tests/train/test_tracking.py::test_grpo_reports_its_rows_and_completions_to_tensorboard",
    "project": "tests/train/test_tracking.py::test_trackio_logs_metrics_config_and_a_table",
    "push_to_hub": "tests/train/test_hub.py::test_grpo_pushes_checkpoints_and_the_final_model_with_a_card",
    "hub_token": "tests/train/test_hub.py::test_hub_model_id_defaults_to_output_dirs_name_and_the_token_to_the_login",
    "hub_private_repo": "tests/train/test_hub.py::test_grpo_pushes_checkpoints_and_the_final_model_with_a_card",
    "hub_model_id": "tests/train/test_hub.py::test_hub_model_id_defaults_to_output_dirs_name_and_the_token_to_the_login",
    "hub_strategy": "tests/train/test_hub.py::test_hub_strategy_decides_what_each_checkpoint_pushes",
    "eval_strategy": "tests/train/test_grpo_trainer_api.py::test_eval_during_training_leaves_the_training_alone",
    "eval_steps": "tests/train/test_grpo_trainer_api.py::test_eval_during_training_leaves_the_training_alone",
    "eval_delay": "test_eval_delay_holds_the_first_evaluations_back",
    "per_device_eval_batch_size": "tests/train/test_grpo_trainer_api.py::test_evaluate_returns_trls_eval_metrics",
    "eval_on_start": "tests/train/test_grpo_trainer_api.py::test_eval_during_training_leaves_the_training_alone",
    "num_generations_eval": "tests/train/test_grpo_trainer_api.py::test_evaluate_returns_trls_eval_metrics",
    "sync_ref_model": "tests/train/test_grpo_trainer_api.py::test_sync_ref_model_mixes_the_policy_into_the_reference",
    "ref_model_mixup_alpha": "tests/train/test_grpo_trainer_api.py::test_sync_ref_model_mixes_the_policy_into_the_reference",
    "ref_model_sync_steps": "tests/train/test_grpo_trainer_api.py::test_sync_ref_model_mixes_the_policy_into_the_reference",
}

# refused unless another field makes them apply: field -> (when they apply, a value refused with the defaults)
REFUSED_UNLESS: dict[str, tuple[str, object]] = {
    "optim_target_modules": (
        "only GaLore / APOLLO optimisers (optim='galore_adamw', 'apollo_adamw', ...) use it",
        ["q"],
    ),
}

# aha defaults that differ from TRL's, and why (TRL's value is accepted and does what TRL's does)
DEFAULTS_DIFFER: dict[str, str] = {
    "output_dir": "runs/grpo (TRL: None, i.e. trainer_output; None works here too)",
    "num_train_epochs": "1.0 (TRL: 3.0): a GRPO run over the prompts once unless asked",
    "optim": "adamw_torch (TRL: adamw_torch_fused; both work, the foreach kernel is what aha's tests pin)",
    "gradient_checkpointing": "False (TRL: True): the course's small models fit without recomputing activations",
    "report_to": "[] (TRL: 'none', which means the same here)",
}

TRL_DEFAULTS = field_defaults(trl.GRPOConfig)
OURS = field_defaults(GRPOConfig)


# ------------------------------------------------------------------------------------------------ the tables
def test_every_trl_field_exists_with_trls_default():
    assert trl.__version__.startswith("1.16."), f"the tables are TRL 1.16's, trl {trl.__version__} is installed"
    missing = sorted(set(TRL_DEFAULTS) - set(OURS))
    assert not missing, f"aha.GRPOConfig lacks TRL fields {missing}"
    differ = {k for k, v in TRL_DEFAULTS.items() if OURS[k] != v}
    assert differ == set(DEFAULTS_DIFFER), f"defaults differ from TRL's for {sorted(differ ^ set(DEFAULTS_DIFFER))}"


def test_trls_defaults_construct():
    for name, value in TRL_DEFAULTS.items():
        GRPOConfig(**{name: value})
    everything = dict(TRL_DEFAULTS)
    cfg = GRPOConfig(**everything)
    assert cfg.output_dir == "trainer_output" and cfg.report_to == [] and cfg.gradient_checkpointing is True
    assert GRPOConfig.from_dict(cfg.to_dict()) == cfg


def test_every_trl_field_is_classified_once():
    groups = [set(HONOURED), set(REFUSED), set(REFUSED_UNLESS)]
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not a & b, f"fields in two tables: {sorted(a & b)}"
    classified = set().union(*groups)
    assert classified == set(TRL_DEFAULTS), (
        f"unclassified: {sorted(set(TRL_DEFAULTS) - classified)}; not TRL's: {sorted(classified - set(TRL_DEFAULTS))}"
    )


def _test_functions(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_each_honoured_field_names_a_test_that_exists():
    files: dict[str, set[str]] = {}
    for name, ref in HONOURED.items():
        path, _, test = ref.rpartition("::") if "::" in ref else (HERE, "", ref)
        files.setdefault(path, _test_functions(path))
        assert test in files[path], f"HONOURED[{name!r}] names {ref}, which does not exist"


def _probe(name: str) -> object:
    """A value other than TRL's default for a refused field."""
    default = TRL_DEFAULTS[name]
    special = {"debug": "underflow_overflow", "include_num_input_tokens_seen": "all", "parallelism_config": object()}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default + 0.5
    if isinstance(default, str):
        return default + "_other"
    annotation = str(next(f.type for f in dataclasses.fields(GRPOConfig) if f.name == name))
    for kind, value in (("bool", True), ("dict", {"x": 1}), ("int", 2), ("float", 0.5), ("list", ["x"]), ("str", "x")):
        if kind in annotation:
            return value
    return "x"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fields_say_so(name):
    value = _probe(name)
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{name}=.* is not supported by aha: .+ \(leave it at"):
        GRPOConfig(**{name: value})


@pytest.mark.parametrize("name", sorted(REFUSED_UNLESS))
def test_conditionally_refused_fields_say_when_they_apply(name):
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{name}"):
        GRPOConfig(**{name: REFUSED_UNLESS[name][1]})


def render_docs() -> str:
    lines = [
        "# TRL 1.16 `GRPOConfig` fields in `aha.GRPOConfig`",
        "",
        "Every field of TRL 1.16's `GRPOConfig` exists in `aha.GRPOConfig` with TRL's name, type and default. Each is",
        "**honoured** (the test named shows its effect) or **refused** with one error naming it when set to anything",
        "but its default (the reason and what to use instead below). Generated by `tests/train/test_trl_fields.py`,",
        "which fails when this file is stale; regenerate with",
        "`AHA_WRITE_DOCS=1 pytest tests/train/test_trl_fields.py -k docs`.",
        "",
        "| field | TRL default | in aha | details |",
        "|---|---|---|---|",
    ]
    for name in TRL_DEFAULTS:
        default = f"`{TRL_DEFAULTS[name]!r}`"
        if name in HONOURED:
            ref = HONOURED[name]
            test = ref if "::" in ref else f"{HERE}::{ref}"
            note = f"`{test}`" + (f"; aha's default: {DEFAULTS_DIFFER[name]}" if name in DEFAULTS_DIFFER else "")
            lines.append(f"| `{name}` | {default} | honoured | {note} |")
        elif name in REFUSED:
            lines.append(f"| `{name}` | {default} | refused | {REFUSED[name]} |")
        else:
            lines.append(f"| `{name}` | {default} | refused unless it applies | {REFUSED_UNLESS[name][0]} |")
    extra = [n for n in OURS if n not in TRL_DEFAULTS]
    lines += ["", "aha's own fields (not in TRL 1.16): " + ", ".join(f"`{n}`" for n in extra) + "."]
    lines += [
        "",
        "Values refused within honoured fields: `optim` names that step inside the backward (`lomo`, `adalomo`, the",
        "`*_layerwise` GaLore/APOLLO ones), schedule-free optimisers, TPU/NPU ones; optimisers whose library is not",
        "installed (bitsandbytes, GaLore, APOLLO, torchao, ...); `lr_scheduler_type='reduce_lr_on_plateau'` and",
        "`save_strategy='best'` (they need an evaluation metric); `train_sampling_strategy='group_by_length'`;",
        "`generation_kwargs` keys other than sampling fields unless `rollout_backend='hf'`; `cache_implementation`",
        "unless `rollout_backend='hf'`; `tf32=True` without a CUDA GPU; `use_liger_kernel=True` without liger-kernel;",
        "`cast_lm_head_to_fp32=True` for models whose logits are not `lm_head(hidden)`.",
        "",
    ]
    return "\n".join(lines)


def test_docs_table_is_current():
    text = render_docs()
    if os.environ.get("AHA_WRITE_DOCS") == "1":
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(text)
    assert DOCS.read_text() == text, (
        "docs/trl-config.md is stale: AHA_WRITE_DOCS=1 pytest tests/train/test_trl_fields.py -k docs"
    )


# ------------------------------------------------------------------------------------------------ helpers
def digit_share(completions, **kwargs):
    return [sum(ch.isdigit() for ch in str(c)) / max(1, len(str(c))) for c in completions]


def _rows(n=16):
    from aha.tasks import get_task

    return get_task("arithmetic").rows("train", n, seed=0)


def _cfg(tmp_path, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        seed=0,
        lr_scheduler_type="constant",
        use_cpu=True,
        bf16=False,
    )
    base.update(kw)
    return GRPOConfig(**base)


def _trainer(small_tiny, tmp_path, rows=None, reward=digit_share, **kw) -> GRPOTrainer:
    model, tok = small_tiny
    return GRPOTrainer(model, reward, _cfg(tmp_path, **kw), rows if rows is not None else _rows(), processing_class=tok)


def _loop(trainer):
    from aha.train.loop import TrainingLoop

    return TrainingLoop.of(trainer, phase="grpo", owners={}, description="GRPO")


def _metrics(tmp_path) -> list[dict]:
    path = tmp_path / "run" / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------------ optimisation
def test_optim_sgd_trains_with_torch_sgd(small_tiny, tmp_path):
    trainer = _trainer(small_tiny, tmp_path, optim="sgd", learning_rate=0.5, max_steps=1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert type(trainer.loop.optimizer) is torch.optim.SGD
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adamw_torch", torch.optim.AdamW),
        ("adamw_torch_fused", torch.optim.AdamW),
        ("adafactor", None),
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_every_optimizer_torch_provides_builds(small_tiny, tmp_path, name, cls):
    from transformers.optimization import Adafactor

    from aha.train.loop import make_optimizer

    model, _ = small_tiny
    opt = make_optimizer(_cfg(tmp_path, optim=name), model)
    assert type(opt) is (cls or Adafactor)
    assert opt.param_groups[0]["lr"] == 1e-3
    if name == "adamw_torch_fused":
        assert opt.param_groups[0]["fused"] is True


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
@pytest.mark.parametrize("name", ["adamw_8bit", "lion_32bit", "paged_adamw_32bit", "rmsprop_bnb"])
def test_bitsandbytes_optimizers_without_it_say_how_to_install(name):
    with pytest.raises(ValueError, match=rf"optim='{name}' needs bitsandbytes, which is not installed: pip install"):
        GRPOConfig(optim=name)


@pytest.mark.parametrize("name, match", [("lomo", "inside the backward"), ("schedule_free_adamw", "train"), ("x", "")])
def test_optimizers_aha_cannot_step_are_refused(name, match):
    with pytest.raises(ValueError, match=rf"GRPOConfig\.optim: .*{match}"):
        GRPOConfig(optim=name)


def test_optim_args_reach_the_optimizer(small_tiny, tmp_path):
    from aha.train.loop import make_optimizer

    model, _ = small_tiny
    opt = make_optimizer(_cfg(tmp_path, optim="sgd", optim_args="momentum=0.9, nesterov=True"), model)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="optim_args must be 'key=value"):
        GRPOConfig(optim_args="momentum")
    with pytest.raises(ValueError, match="optim_args: momentum not read by optim='adamw_torch', which takes none"):
        GRPOConfig(optim_args="momentum=0.9")


def test_adam_hyperparameters_reach_adamw(small_tiny, tmp_path):
    from aha.train.loop import make_optimizer

    model, _ = small_tiny
    opt = make_optimizer(_cfg(tmp_path, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-5), model)
    assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["eps"] == 1e-5


def test_weight_decay_spares_biases_and_norms(small_tiny, tmp_path):
    from aha.train.loop import make_optimizer

    model, _ = small_tiny
    opt = make_optimizer(_cfg(tmp_path, weight_decay=0.1), model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    spared = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert any("q_proj" in n for n in decayed) and spared and all("norm" in n or "bias" in n for n in spared)


def test_scheduler_by_name_with_kwargs_and_fractional_warmup(small_tiny, tmp_path):
    trainer = _trainer(
        small_tiny,
        tmp_path,
        max_steps=8,
        warmup_steps=0.25,  # 2 of 8 steps
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs='{"min_lr_rate": 0.1}',  # TRL's command line gives JSON
    )
    loop = _loop(trainer)
    lrs = []
    for _ in range(8):
        lrs.append(loop.scheduler.get_last_lr()[0])
        loop.optimizer.step()
        loop.scheduler.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3)
    assert loop.scheduler.get_last_lr()[0] == pytest.approx(1e-4)  # the floor: min_lr_rate × learning_rate
    with pytest.raises(ValueError, match="reduce_lr_on_plateau steps on an evaluation metric"):
        GRPOConfig(lr_scheduler_type="reduce_lr_on_plateau")
    with pytest.raises(ValueError, match=r"lr_scheduler_type='cosine_with_min_lr' with lr_scheduler_kwargs=\{\}"):
        _loop(_trainer(small_tiny, tmp_path, lr_scheduler_type="cosine_with_min_lr"))


def test_max_grad_norm_clips_and_zero_turns_clipping_off(small_tiny, tmp_path):
    def step(max_grad_norm):  # one SGD step at lr 1: the update is the (clipped) gradient
        model, tok = small_tiny
        before = [p.detach().clone() for p in model.parameters()]
        kw = dict(optim="sgd", learning_rate=1.0, max_steps=1, max_grad_norm=max_grad_norm)
        state = _trainer((model, tok), tmp_path / str(max_grad_norm), **kw).train()
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item()
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                p.copy_(b)
        return moved, state.log_history[-2]["grad_norm"]  # the step's row (the last is the run's summary)

    moved, norm = step(0.0)  # no clipping: the whole gradient
    assert norm > 1e-3 and moved == pytest.approx(norm, rel=1e-3)
    moved, norm_clipped = step(1e-4)
    assert norm_clipped == pytest.approx(norm, rel=1e-3) and moved == pytest.approx(1e-4, rel=1e-2)


def test_num_train_epochs_sets_the_step_count(small_tiny, tmp_path):
    # 16 prompts, 2 prompts (8 completions) per step: 8 steps an epoch
    assert _trainer(small_tiny, tmp_path, max_steps=-1, num_train_epochs=2.0).total_steps() == 16
    assert _trainer(small_tiny, tmp_path, max_steps=-1, num_train_epochs=0.5).total_steps() == 4


# ------------------------------------------------------------------------------------------------ run set-up
def test_run_name_names_the_run(small_tiny, tmp_path):
    assert _loop(_trainer(small_tiny, tmp_path, run_name="digits-v1")).description == "digits-v1"
    assert _loop(_trainer(small_tiny, tmp_path)).description == "GRPO"


def test_full_determinism_turns_on_deterministic_kernels(small_tiny, tmp_path, monkeypatch):
    for name in ("CUBLAS_WORKSPACE_CONFIG", "FLASH_ATTENTION_DETERMINISTIC"):
        monkeypatch.setenv(name, "")  # restored after the test
    try:
        _trainer(small_tiny, tmp_path, full_determinism=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]  # cuBLAS in its deterministic mode
    finally:
        torch.use_deterministic_algorithms(False)
    _trainer(small_tiny, tmp_path)
    assert not torch.are_deterministic_algorithms_enabled()


def test_tf32_sets_the_matmul_precision(small_tiny, tmp_path):
    before = torch.backends.fp32_precision
    try:
        _trainer(small_tiny, tmp_path, tf32=False)
        assert torch.backends.fp32_precision == "ieee"
    finally:
        torch.backends.fp32_precision = before
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="GRPOConfig.tf32: TF32 is a CUDA"):
            GRPOConfig(tf32=True)


def test_use_cpu_keeps_training_on_the_cpu(small_tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert GRPOConfig(bf16=False).device_type == "cuda"
    assert GRPOConfig(use_cpu=True).device_type == "cpu"
    monkeypatch.undo()
    assert _trainer(small_tiny, tmp_path, use_cpu=True).device.type == "cpu"


def test_local_rank_must_match_the_launcher(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="GRPOConfig.local_rank: the launcher sets the rank"):
        GRPOConfig(local_rank=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert GRPOConfig(local_rank=1).local_rank == 1


def test_ddp_fields_become_accelerate_handlers(small_tiny, tmp_path):
    from aha.train.policy import process_group_options

    cfg = _cfg(
        tmp_path,
        ddp_find_unused_parameters=True,
        ddp_bucket_cap_mb=50,
        ddp_broadcast_buffers=False,
        ddp_static_graph=True,
        ddp_backend="gloo",
        ddp_timeout=60,
    )
    ddp, init = process_group_options(cfg)["kwargs_handlers"]
    assert (ddp.find_unused_parameters, ddp.bucket_cap_mb, ddp.broadcast_buffers, ddp.static_graph) == (
        True,
        50,
        False,
        True,
    )
    assert init.backend == "gloo" and init.timeout.total_seconds() == 60
    trainer = _trainer(small_tiny, tmp_path, ddp_find_unused_parameters=True)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is True  # what DDP's wrapper is made with
    (init,) = process_group_options(_cfg(tmp_path))["kwargs_handlers"]  # defaults: transformers' 1800 s
    assert init.timeout.total_seconds() == 1800


# ------------------------------------------------------------------------------------------------ models
def test_model_init_kwargs_dtype_and_attention(model_dir, small_tiny, tmp_path):
    _, tok = small_tiny
    cfg = _cfg(tmp_path, model_init_kwargs={"torch_dtype": "bfloat16", "attn_implementation": "eager"})
    trainer = GRPOTrainer(model_dir, digit_share, cfg, _rows(), processing_class=tok)
    assert trainer.model.dtype == torch.bfloat16
    assert trainer.model.config._attn_implementation == "eager"
    default = GRPOTrainer(model_dir, digit_share, _cfg(tmp_path), _rows(), processing_class=tok)
    assert default.model.dtype == torch.float32 and default.model.config._attn_implementation != "eager"
    with pytest.raises(ValueError, match="model_init_kwargs applies when the model is given by name"):
        GRPOTrainer(small_tiny[0], digit_share, cfg, _rows(), processing_class=tok)


def test_trust_remote_code_reaches_from_pretrained(small_tiny, tmp_path, monkeypatch):
    import aha.train.policy as policy

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs, name=name)
        return small_tiny[0]

    monkeypatch.setattr(policy.AutoModelForCausalLM, "from_pretrained", fake)
    cfg = _cfg(tmp_path, trust_remote_code=True, model_init_kwargs={"dtype": "float32"})
    import aha.rewards.scoring as scoring

    rm = {}

    def fake_rm(name, **kwargs):  # a reward model given by name takes the same options (as in TRL)
        rm.update(kwargs, name=name)
        return torch.nn.Identity()  # a callable: no tokenizer needed

    monkeypatch.setattr(scoring.AutoModelForSequenceClassification, "from_pretrained", fake_rm)
    GRPOTrainer("org/remote-model", [digit_share, "org/rm"], cfg, _rows(), processing_class=small_tiny[1])
    assert seen["name"] == "org/remote-model" and seen["trust_remote_code"] is True
    assert rm == {"name": "org/rm", "num_labels": 1, "dtype": torch.float32, "trust_remote_code": True}


def test_disable_dropout(small_tiny, tmp_path):
    model, tok = small_tiny
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5
    trainer = _trainer((model, tok), tmp_path, disable_dropout=True)
    assert all(m.attention_dropout == 0.0 for m in trainer.model.modules() if hasattr(m, "attention_dropout"))
    trainer.model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    assert torch.equal(trainer.model(ids).logits, trainer.model(ids).logits)  # no dropout left in train mode


def test_cast_lm_head_to_fp32_computes_the_head_in_fp32(small_tiny, tmp_path, monkeypatch):
    from aha.train.forward import lm_head_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 300, bias=False)
    hidden = torch.randn(10, 64, requires_grad=True)
    targets = torch.randint(300, (10,))
    exact, _ = lm_head_logps(hidden, head, targets, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = lm_head_logps(hidden, head, targets, 1.0)
        fp32, _ = lm_head_logps(hidden, head, targets, 1.0, fp32=True)
    assert (low - exact).abs().max() > 1e-4  # bf16 matmul
    torch.testing.assert_close(fp32, exact, rtol=1e-6, atol=1e-6)
    fp32.sum().backward()  # and it has gradients
    assert hidden.grad is not None
    # the trainer passes it to every log-prob forward; a model whose logits are not lm_head(hidden) is refused
    model, tok = small_tiny
    trainer = _trainer((model, tok), tmp_path, cast_lm_head_to_fp32=True, beta=0.04, num_iterations=2, max_steps=1)
    seen = []
    import aha.train.grpo as grpo

    real = grpo.token_logps

    def spy(*args, **kwargs):
        seen.append(kwargs.get("head_fp32"))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo, "token_logps", spy)
    trainer.train()
    assert len(seen) >= 3 and all(seen)  # the loss, π_old and π_ref forwards
    model.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="cast_lm_head_to_fp32=True needs a model whose logits are lm_head"):
        _trainer((model, tok), tmp_path, cast_lm_head_to_fp32=True)


def test_use_liger_kernel_applies_transformers_liger_integration(small_tiny, tmp_path, monkeypatch):
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(ValueError, match="use_liger_kernel=True needs liger-kernel, which is not installed"):
            GRPOConfig(use_liger_kernel=True)
        fake = types.ModuleType("liger_kernel")
        fake.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
        monkeypatch.setitem(sys.modules, "liger_kernel", fake)
    import transformers.integrations.liger as liger

    calls = []
    monkeypatch.setattr(liger, "apply_liger_kernel", lambda model, config: calls.append((model, config)))
    trainer = _trainer(small_tiny, tmp_path, use_liger_kernel=True, liger_kernel_config={"rms_norm": True})
    assert calls == [(trainer.model, {"rms_norm": True, "fused_linear_cross_entropy": False})]
    with pytest.raises(ValueError, match="liger_kernel_config: needs use_liger_kernel=True"):
        GRPOConfig(liger_kernel_config={"rms_norm": True})
    with pytest.raises(ValueError, match="fused_linear_cross_entropy replaces the model's forward"):
        GRPOConfig(use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": True})


COMPILED: list[int] = []


def _counting_backend(gm, example_inputs):
    COMPILED.append(len(gm.graph.nodes))
    return gm.forward


def test_torch_compile_runs_the_loss_forward_compiled(small_tiny, tmp_path):
    from torch._dynamo import list_backends, register_backend

    from aha.train.forward import token_logps

    if "aha_counting" not in list_backends(exclude_tags=()):
        register_backend(name="aha_counting")(_counting_backend)
    COMPILED.clear()
    ids, mask = torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.ones(2, 3, dtype=torch.long)
    eager = token_logps(small_tiny[0], ids, mask, ids, mask, 1.0)[0]
    trainer = _trainer(small_tiny, tmp_path, torch_compile_backend="aha_counting")
    assert trainer.args.torch_compile is True  # naming a backend turns it on, as in transformers
    try:
        logps, _ = token_logps(trainer.model, ids, mask, ids, mask, 1.0)  # what the loss forward runs
        assert COMPILED, "no graph went through the backend"
        torch.testing.assert_close(logps, eager)
    finally:
        torch._dynamo.reset()


def test_torch_compile_mode_reaches_torch_compile(small_tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    _trainer(small_tiny, tmp_path, torch_compile_mode="reduce-overhead")
    assert calls == [("LlamaModel", {"mode": "reduce-overhead"})]  # the decoder token_logps' fast path calls


def test_gradient_checkpointing_kwargs_choose_the_layers(tmp_path):
    from aha.models.tiny import build_tiny

    def checkpointed(**kw):
        model, tok = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        trainer = _trainer((model, tok), tmp_path, max_steps=1, **kw)
        layers = trainer.model.model.layers
        flags = [bool(getattr(m, "gradient_checkpointing", False)) for m in layers]
        if any(flags):
            trainer.train()  # and it trains
        return flags

    assert checkpointed() == [False, False]
    assert checkpointed(gradient_checkpointing=True) == [True, True]
    assert (
        checkpointed(gradient_checkpointing=True, gradient_checkpointing_kwargs={"every_n_layers": 2}).count(True) == 1
    )
    assert (
        checkpointed(activation_checkpointing=True, activation_checkpointing_kwargs='{"every_n_layers": 2}').count(True)
        == 1
    )


def test_torch_empty_cache_steps(small_tiny, tmp_path, monkeypatch):
    import aha.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "empty_device_cache", lambda device: calls.append(device))
    _trainer(small_tiny, tmp_path, max_steps=4, torch_empty_cache_steps=2).train()
    assert len(calls) == 2
    calls.clear()
    _trainer(small_tiny, tmp_path / "b", max_steps=4).train()
    assert calls == []


# ------------------------------------------------------------------------------------------------ logging
def test_logging_strategies_and_fractional_steps(small_tiny, tmp_path):
    def steps(name, **kw):
        trainer = _trainer(small_tiny, tmp_path / name, rows=_rows(8), **kw)
        return [row["step"] for row in trainer.train().log_history if "train_runtime" not in row]  # not the summary

    assert steps("ratio", max_steps=4, logging_steps=0.5) == [2, 4]
    assert steps("first", max_steps=4, logging_steps=3, logging_first_step=True) == [1, 3, 4]
    assert steps("no", max_steps=3, logging_strategy="no") == []
    # 8 prompts, 2 a step: an epoch every 4 steps
    assert steps("epoch", max_steps=8, logging_strategy="epoch") == [4, 8]
    assert [row["step"] for row in _metrics(tmp_path / "epoch")] == [4, 8]  # metrics.jsonl gets the same rows


def test_logging_nan_inf_filter(small_tiny, tmp_path):
    def logged(**kw):
        loop = _loop(_trainer(small_tiny, tmp_path, **kw))
        loop.pending["x"] += [1.0, float("nan"), float("inf")]
        loop.log_window()
        return loop.state.log_history[-1]["x"]

    assert logged() == 1.0
    assert math.isnan(logged(logging_nan_inf_filter=False))


def test_log_levels_set_transformers_verbosity(tmp_path):
    from transformers.utils import logging as hf_logging

    from aha.train.loop import set_log_level

    def level(main, local_main, **kw):
        acc = types.SimpleNamespace(is_main_process=main, is_local_main_process=local_main)
        hf_logging.set_verbosity_warning()
        set_log_level(_cfg(tmp_path, **kw), acc)
        return hf_logging.get_verbosity()

    try:
        assert level(True, True, log_level="error") == hf_logging.ERROR
        assert level(True, True) == hf_logging.WARNING  # passive: left as it was
        assert level(False, False, log_level="error", log_level_replica="critical") == hf_logging.CRITICAL
        # the first process of a second node: main for its node, a replica for the run
        assert level(False, True, log_level="info", log_level_replica="error") == hf_logging.INFO
        assert level(False, True, log_level="info", log_level_replica="error", log_on_each_node=False) == (
            hf_logging.ERROR
        )
    finally:
        hf_logging.set_verbosity_warning()
    with pytest.raises(ValueError, match="GRPOConfig.log_level: must be one of"):
        GRPOConfig(log_level="loud")


def test_disable_tqdm(small_tiny, tmp_path, monkeypatch):
    import aha.train.loop as loop

    seen = []
    real = loop.progress
    monkeypatch.setattr(loop, "progress", lambda disable=False: seen.append(disable) or real(disable=disable))
    _trainer(small_tiny, tmp_path, max_steps=1, disable_tqdm=True).train()
    _trainer(small_tiny, tmp_path / "b", max_steps=1).train()
    assert seen == [True, False]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_save_strategies_and_fractional_steps(small_tiny, tmp_path):
    def saved(name, **kw):
        _trainer(small_tiny, tmp_path / name, rows=_rows(8), logging_steps=100, **kw).train()
        out = tmp_path / name / "run"
        return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))

    assert saved("ratio", max_steps=4, save_steps=0.5) == [2, 4]
    assert saved("no", max_steps=2, save_steps=1, save_strategy="no") == []
    assert saved("epoch", max_steps=8, save_strategy="epoch") == [4, 8]
    with pytest.raises(ValueError, match="save_strategy: 'best' saves on an evaluation metric"):
        GRPOConfig(save_strategy="best")
    with pytest.raises(ValueError, match="save_steps: must be a whole number of steps"):
        GRPOConfig(save_steps=2.5)


def test_save_only_model_writes_weights_only_and_cannot_resume(small_tiny, tmp_path):
    _trainer(small_tiny, tmp_path, save_steps=2, save_only_model=True).train()
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert (ckpt / "model.safetensors").exists() and not list(ckpt.glob("*.pt"))
    with pytest.raises(ValueError, match="save_only_model=True and holds the weights only"):
        _trainer(small_tiny, tmp_path, max_steps=4, resume_from_checkpoint="auto").train()


# ------------------------------------------------------------------------------------------------ data
def _idx_rows(n):
    return [{"prompt": f"{i}+{i}=", "idx": i} for i in range(n)]


def test_shuffle_dataset_and_sequential_sampling(small_tiny, tmp_path):
    def order(**kw):
        return [r["idx"] for r in _trainer(small_tiny, tmp_path, rows=_idx_rows(8), **kw).batches.next_rows(8)]

    assert order(shuffle_dataset=False) == list(range(8))
    assert order(train_sampling_strategy="sequential") == list(range(8))
    assert sorted(order()) == list(range(8)) and order() != list(range(8))
    with pytest.raises(ValueError, match="group_by_length batches rows of similar length"):
        GRPOConfig(train_sampling_strategy="group_by_length")


def test_data_seed_orders_the_prompts(small_tiny, tmp_path):
    def order(**kw):
        return [r["idx"] for r in _trainer(small_tiny, tmp_path, rows=_idx_rows(16), **kw).batches.next_rows(16)]

    assert order(seed=1) != order(seed=2)
    assert order(seed=1, data_seed=7) == order(seed=2, data_seed=7)  # data_seed alone decides the prompt order
    assert order(seed=1, data_seed=1) == order(seed=1)


def test_dataloader_drop_last_skips_an_epochs_short_rest(small_tiny, tmp_path):
    # 6 prompts, 4 per generation batch: the second batch takes the epoch's 2 left and 2 of the next epoch, or
    # with drop_last skips those 2 and takes 4 of the next epoch
    def epoch(**kw):
        kw = dict(per_device_train_batch_size=16, max_steps=2, **kw)
        return _trainer(small_tiny, tmp_path, rows=_rows(6), **kw).train().epoch

    assert epoch() == pytest.approx(8 / 6)
    assert epoch(dataloader_drop_last=True) == pytest.approx(10 / 6)


def test_pad_to_multiple_of(small_tiny, tmp_path):
    trainer = _trainer(small_tiny, tmp_path, pad_to_multiple_of="16")  # TRL's command line gives a string
    assert trainer.args.pad_to_multiple_of == 16
    batch = trainer.batches.generate_and_score(_rows(2)).batch
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        assert batch[key].size(1) % 16 == 0, key
    assert GRPOConfig().pad_to_multiple_of is None  # "auto": no padding off Neuron


def test_mask_truncated_completions(small_tiny, tmp_path):
    def masks(**kw):
        batch = _trainer(small_tiny, tmp_path, max_completion_length=2, **kw).batches.generate_and_score(_rows(2))
        return batch.batch["completion_ids"], batch.batch["completion_mask"]

    ids, mask = masks()
    assert ids.size(1) <= 2 and mask.sum() > 0
    _, masked = masks(mask_truncated_completions=True)
    eos = small_tiny[1].eos_token_id
    truncated = ~(ids == eos).any(1)
    assert truncated.any() and (masked[truncated] == 0).all() and torch.equal(masked[~truncated], mask[~truncated])


def test_top_entropy_quantile_masks_low_entropy_tokens(small_tiny, tmp_path):
    def loss(q):
        trainer = _trainer(small_tiny, tmp_path, top_entropy_quantile=q)
        torch.manual_seed(0)
        flight = trainer.batches.next_batch()
        return trainer.compute_loss(flight.batch, flight.num_items)[0].item()

    assert loss(1.0) != loss(0.2)


def test_chat_template_kwargs_reach_the_template(small_tiny, tmp_path, monkeypatch):
    from aha.data.prompts import render_prompt

    _, tok = small_tiny
    template = tok.chat_template
    try:
        tok.chat_template = "{% if not thinking %}no-think {% endif %}{{ messages[0]['content'] }}"
        msgs = [{"role": "user", "content": "1+1"}]
        assert render_prompt(tok, msgs, {"thinking": False}) == "no-think 1+1"
        assert render_prompt(tok, msgs, {"thinking": True}) == "1+1"
        import aha.train.rollouts as rollouts

        seen = []
        monkeypatch.setattr(rollouts, "render_prompt", lambda t, p, kw=None: seen.append(kw) or render_prompt(t, p, kw))
        trainer = _trainer(small_tiny, tmp_path, chat_template_kwargs='{"thinking": false}')
        trainer.batches.generate_and_score([{"prompt": msgs}] * 2)
        assert seen and all(kw == {"thinking": False} for kw in seen)
    finally:
        tok.chat_template = template


def test_generation_kwargs(small_tiny, tmp_path):
    from aha.train.rollouts import sampling_params

    params = sampling_params(_cfg(tmp_path, temperature=0.9, generation_kwargs={"temperature": 0.5, "top_k": 3}))
    assert (params.temperature, params.top_k, params.generate_kwargs) == (0.5, 3, {})
    with pytest.raises(ValueError, match="generation_kwargs: 'suppress_tokens' is transformers generate"):
        GRPOConfig(generation_kwargs={"suppress_tokens": [1]})
    eos = small_tiny[1].eos_token_id
    trainer = _trainer(
        small_tiny,
        tmp_path,
        rollout_backend="hf",
        max_completion_length=8,
        generation_kwargs={"suppress_tokens": [eos]},
    )
    rollout = trainer.batches.generate_and_score(_rows(2))
    assert rollout.info["completions/clipped_ratio"] == 1.0  # EOS suppressed: every completion runs to the limit
    assert not (rollout.batch["completion_ids"] == eos).any()


def test_cache_implementation_reaches_generate(small_tiny, tmp_path, monkeypatch):
    model, tok = small_tiny
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw.get("cache_implementation")) or real(**kw))
    trainer = _trainer((model, tok), tmp_path, rollout_backend="hf", cache_implementation="dynamic")
    trainer.batches.generate_and_score(_rows(2))
    assert seen == ["dynamic"]
    with pytest.raises(ValueError, match="cache_implementation: is transformers generate\\(\\)'s KV-cache choice"):
        GRPOConfig(cache_implementation="static")


def test_log_completions_and_unique_prompts():
    from aha.train.metrics import rollout_metrics

    def samples(**kw):
        args = types.SimpleNamespace(num_generations=2, reward_weights=None, log_completions=True, **kw)
        rewards = torch.tensor([[1.0], [0.0], [0.5], [0.25]])
        info = rollout_metrics(
            args, [digit_share], rewards, torch.tensor([3, 3, 3, 3]), torch.zeros(4, dtype=torch.bool),
            ["p", "p", "q", "q"], ["a", "b", "c", "d"],
        )  # fmt: skip
        return info["_samples"]

    assert [s[:2] for s in samples(num_completions_to_print=3)] == [("p", "a"), ("p", "b"), ("q", "c")]
    assert [s[:2] for s in samples(num_completions_to_print=3, log_unique_prompts=True)] == [("p", "a"), ("q", "c")]


def test_vllm_fields_reach_the_engine(small_tiny, tmp_path, monkeypatch):
    import aha.rollout.vllm as vllm_module

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    made = []

    class Engine:
        def __init__(self, model, tokenizer, *, mode, seed, **kw):
            made.append({"mode": mode, **kw})

        def sync_weights(self, model):
            pass

        def generate(self, prompts, params, seeds):
            # every completion: 2 tokens, the engine's log-probs far from the trainer's (weights get clipped)
            return [[7, 8]] * len(prompts), [[-20.0, -20.0]] * len(prompts)

    monkeypatch.setattr(vllm_module, "VLLMRollout", Engine)
    common = dict(use_vllm=True, vllm_importance_sampling_mode="token_truncate")
    server = _trainer(
        small_tiny,
        tmp_path,
        vllm_mode="server",
        vllm_server_host="10.0.0.2",
        vllm_server_port=9000,
        vllm_server_timeout=5.0,
        vllm_importance_sampling_cap=2.0,  # TRL's deprecated name of clip_max: it wins
        **common,
    )
    batch = server.batches.sample_batch().batch
    assert made[-1] == {"mode": "server", "server_base_url": "http://10.0.0.2:9000", "server_timeout": 5.0}
    assert batch["sampling_weights"].max() == pytest.approx(2.0)
    url = _trainer(small_tiny, tmp_path, vllm_mode="server", vllm_server_base_url="https://h:1", **common)
    url.batches.sample_batch()
    assert made[-1]["server_base_url"] == "https://h:1"
    colocate = _trainer(
        small_tiny,
        tmp_path,
        vllm_gpu_memory_utilization=0.5,
        vllm_max_model_length=64,
        vllm_importance_sampling_clip_max=4.0,
        **common,
    )
    batch = colocate.batches.sample_batch().batch
    assert made[-1] == {"mode": "colocate", "max_model_len": 64, "gpu_memory_utilization": 0.5}
    assert batch["sampling_weights"].max() == pytest.approx(4.0)
    _trainer(small_tiny, tmp_path, vllm_model_impl="transformers", **common).batches.sample_batch()
    assert made[-1]["model_impl"] == "transformers"
    with pytest.raises(ValueError, match="vllm_model_impl: a server chooses its own model implementation"):
        _cfg(tmp_path, vllm_mode="server", vllm_model_impl="transformers", **common)
    off = _trainer(small_tiny, tmp_path, vllm_importance_sampling_correction=False, **common)
    assert "sampling_weights" not in off.batches.sample_batch().batch


# ------------------------------------------------------------------------------------------------ merged from main
def test_vespo_lambda_pos_and_k_neg_change_the_loss(small_tiny, tmp_path):
    """compute_loss reads vespo_lambda_pos and vespo_k_neg (the two VESPO fields the objectives' tests leave at
    TRL's defaults): changing either changes a micro-batch's loss, on the side of the advantages it names."""
    trainer = _trainer(small_tiny, tmp_path, loss_type="vespo", num_iterations=2)
    mb = dict(trainer.batches.generate_and_score(_rows(2)).batch)
    n, t = mb["completion_ids"].shape
    with torch.no_grad():
        current = trainer.logps(mb, reference=False)
    mb["old_logps"] = current - torch.linspace(-0.5, 0.5, n).unsqueeze(1)  # ratios on both sides of 1
    mb["advantages"] = torch.linspace(-1.0, 1.0, n)

    def loss(**fields):
        for k, v in fields.items():
            setattr(trainer.args, k, v)
        with torch.no_grad():
            return trainer.compute_loss(mb, 20.0)[0].item()

    base = loss()
    assert loss(vespo_lambda_pos=6.0) != pytest.approx(base, rel=1e-4)
    assert loss(vespo_lambda_pos=3.0) == pytest.approx(base)
    assert loss(vespo_k_neg=1.0) != pytest.approx(base, rel=1e-4)


def test_adaptive_entropy_coefficient_stays_within_its_bounds():
    from types import SimpleNamespace

    from aha.train.entropy import EntropyControl

    one = SimpleNamespace(num_processes=1)

    def coef_after(entropy, steps, **kw):
        control = EntropyControl(GRPOConfig(use_adaptive_entropy=True, entropy_target=1.0, **kw))
        for _ in range(steps):
            control.observe(torch.full((1, 2), entropy), torch.ones(1, 2))
            control.step(one)
        return control.coef

    # below the target the coefficient rises by entropy_coef_delta each step, up to entropy_coef_max
    assert coef_after(0.1, 3, entropy_coef=0.1, entropy_coef_delta=0.05) == pytest.approx(0.25)
    assert coef_after(0.1, 3, entropy_coef=0.1, entropy_coef_delta=0.05, entropy_coef_max=0.2) == pytest.approx(0.2)
    # above it, it falls, down to entropy_coef_min
    assert coef_after(5.0, 3, entropy_coef=0.3, entropy_coef_delta=0.05) == pytest.approx(0.15)
    assert coef_after(5.0, 3, entropy_coef=0.3, entropy_coef_delta=0.05, entropy_coef_min=0.2) == pytest.approx(0.2)


def test_eval_delay_holds_the_first_evaluations_back(small_tiny, tmp_path):
    def evals(name, **kw):
        model, tok = small_tiny
        cfg = _cfg(tmp_path / name, max_steps=4, eval_strategy="steps", eval_steps=1, num_generations_eval=1, **kw)
        trainer = GRPOTrainer(model, digit_share, cfg, _rows(), processing_class=tok, eval_dataset=_rows(2))
        return [row["step"] for row in trainer.train().log_history if "eval_loss" in row]

    assert evals("none") == [1, 2, 3, 4]
    assert evals("delay", eval_delay=3) == [3, 4]
    with pytest.raises(ValueError, match="GRPOConfig.eval_delay"):
        GRPOConfig(eval_delay=-1)
