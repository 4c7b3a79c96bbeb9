"""GRPOConfig's fields for TRL 1.16's other loss types, the entropy bonus, multi-objective rewards and
off-policy masking: TRL's names and defaults, and one clear error for each bad value or combination."""

import dataclasses

import pytest

from aha.train.config import GRPOConfig

FIELDS = [
    "sapo_temperature_neg",
    "sapo_temperature_pos",
    "vespo_k_pos",
    "vespo_lambda_pos",
    "vespo_k_neg",
    "vespo_lambda_neg",
    "multi_objective_aggregation",
    "entropy_coef",
    "use_adaptive_entropy",
    "entropy_coef_min",
    "entropy_coef_max",
    "entropy_coef_delta",
    "entropy_target",
    "off_policy_mask_threshold",
]


def _type_name(t) -> str:  # aha's annotations are strings (postponed), TRL's the types themselves
    return t if isinstance(t, str) else t.__name__ if isinstance(t, type) else str(t)


def error(**kwargs) -> str:
    with pytest.raises(ValueError) as err:
        GRPOConfig(**kwargs)
    return str(err.value)


def test_names_types_and_defaults_are_trls():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"defaults are TRL 1.16's, trl {trl.__version__} is installed")
    theirs = {f.name: f for f in dataclasses.fields(trl.GRPOConfig)}
    ours = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    for name in FIELDS:
        assert ours[name].default == theirs[name].default, name
        assert _type_name(ours[name].type) == _type_name(theirs[name].type), name
    assert (
        "Supported values are 'grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo', 'luspo', and 'vespo'"
        in (theirs["loss_type"].metadata["help"])
    )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"])
def test_all_eight_loss_types(loss_type):
    assert GRPOConfig(loss_type=loss_type).loss_type == loss_type


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(loss_type="ppo"), "loss_type"),
        (dict(sapo_temperature_pos=0.0), "sapo_temperature_pos"),
        (dict(sapo_temperature_neg=-1.0), "sapo_temperature_neg"),
        (dict(vespo_k_pos=-1.0), "vespo_k_pos"),
        (dict(vespo_k_neg=-0.5), "vespo_k_neg"),
        (dict(vespo_lambda_pos=0.0), "vespo_lambda_pos"),
        (dict(vespo_lambda_neg=-2.0), "vespo_lambda_neg"),
        (dict(multi_objective_aggregation="mean"), "multi_objective_aggregation"),
        (dict(multi_objective_aggregation="normalize_then_sum", scale_rewards="none"), "scale_rewards"),
        (dict(entropy_coef=float("nan")), "entropy_coef"),
        (dict(use_adaptive_entropy=True, entropy_coef_delta=0.0), "entropy_coef_delta"),
        (dict(use_adaptive_entropy=True, entropy_coef_min=0.5, entropy_coef_max=0.1), "entropy_coef_min"),
        (dict(use_adaptive_entropy=True, entropy_target=-1.0), "entropy_target"),
        (dict(off_policy_mask_threshold=-0.1, num_iterations=2), "off_policy_mask_threshold"),
        (dict(loss_type="cispo", epsilon_high=5.0, delta=6.0), "delta"),
        (dict(loss_type="sapo", epsilon_high=0.28), "epsilon_high"),
        (dict(loss_type="vespo", epsilon_high=0.28), "epsilon_high"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    assert f"GRPOConfig.{field}" in error(**kwargs)


def test_off_policy_mask_needs_off_policy_data():
    msg = error(off_policy_mask_threshold=0.5)
    assert "off_policy_mask_threshold" in msg and "on-policy" in msg and "num_iterations" in msg
    assert GRPOConfig(off_policy_mask_threshold=0.5, num_iterations=2).off_policy_mask_threshold == 0.5
    assert GRPOConfig(off_policy_mask_threshold=0.0, steps_per_generation=2, per_device_train_batch_size=4)


def test_vespo_takes_only_token_level_vllm_weights():
    msg = error(loss_type="vespo", use_vllm=True)  # the default mode, sequence_mask
    assert "vllm_importance_sampling_mode" in msg and "token_truncate" in msg


def test_normalize_then_sum_with_default_scaling():
    assert GRPOConfig(multi_objective_aggregation="normalize_then_sum").scale_rewards == "group"


def test_adaptive_entropy_fields_accepted():
    cfg = GRPOConfig(use_adaptive_entropy=True, entropy_coef=0.01, entropy_target=3.0, entropy_coef_max=0.1)
    assert cfg.use_adaptive_entropy and cfg.entropy_coef_max == 0.1
