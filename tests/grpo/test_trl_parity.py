"""aha.grpo equals TRL 1.16's GRPOTrainer, checked against a real trainer.

Loss: for every combination of loss_type × importance_sampling_level × beta × epsilon_high × delta
(× use_bias_correction_kl when beta != 0), and for the other four loss types (cispo, sapo, luspo, vespo) over
their own options, a fresh ``GRPOTrainer`` is built on the tiny model and its own
``_compute_loss`` runs on a hand-made batch: left-padded prompts, right-padded completions, old log-probs
pushed away from the current ones so that clipping (and two-sided clipping) really happens. aha recomputes
the log-probs of an identical copy of the model and calls ``policy_loss``. Loss, every parameter gradient
and the metrics TRL logs must agree to float32 round-off.

The same comparison covers the vLLM importance-sampling weights (which VESPO folds into its sequence weight),
DeepSeek-V3.2's off-policy sequence mask (``off_policy_mask_threshold``, against π_old or the sampler's
log-probs), and the entropy bonus: static ``entropy_coef`` (with and without ``top_entropy_quantile``) and
adaptive (``use_adaptive_entropy``: three optimiser steps, coefficient and loss each step).

Advantages: TRL's ``_generate_and_score_completions`` runs for real, with a ``rollout_func`` returning fixed
token ids instead of sampling, and reward functions that read a fixed (N, K) table with NaNs; its
``advantages`` output is compared with ``compute_advantages`` on every row. That includes rows where every
reward function returned None: TRL 1.16 sets them to NaN, leaves them out of the group's nanmean/nanstd and
zeroes their advantage (``torch.nan_to_num(advantages, nan=0.0)``), and so does aha; for both
``multi_objective_aggregation`` modes.
"""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from aha.grpo import (
    compute_advantages,
    entropy_bonus,
    entropy_from_logits,
    importance_sampling_weights,
    policy_loss,
    selective_log_softmax,
    top_entropy_mask,
)
from aha.models.tiny import build_tiny

trl = pytest.importorskip("trl")

SIZES = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
B, G = 6, 3  # completions in the batch, completions per prompt
P, T = 5, 7  # padded prompt / completion lengths
MAX_COMPLETION_LENGTH = 10  # > T, so that dr_grpo's B × L_max normaliser is not the padded width
TEMPERATURE = 0.7  # != 1, so that the logits / temperature step is checked too
EPSILON = 0.2
RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model saved to disk and loaded back, so that config._name_or_path points at it: TRL builds
    its reference model from that path when beta != 0 (unused here, ref log-probs are given)."""
    root = tmp_path_factory.mktemp("tiny")
    _, tokenizer = build_tiny(root / "model", **SIZES)
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    assert model.config.attention_dropout == 0.0  # deterministic forward in train mode
    return SimpleNamespace(model=model, tokenizer=tokenizer, out=root / "out")


def _completion_logps(model, b, with_entropy: bool = False):
    """Per-token log-probs of the completion tokens, as TRL's _get_per_token_logps_and_entropies:
    forward on concat(prompt, completion), logits of the positions predicting the completion, / temperature.
    `with_entropy`: also the per-token entropies (B, T), with their gradient (the entropy bonus's)."""
    ids = torch.cat([b.prompt_ids, b.completion_ids], dim=1)  # (B, P+T)
    attention_mask = torch.cat([b.prompt_mask, b.completion_mask], dim=1)  # (B, P+T)
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, -T - 1 : -1] / TEMPERATURE  # (B, T, V)
    logps = selective_log_softmax(logits, b.completion_ids)  # (B, T)
    return (logps, entropy_from_logits(logits)) if with_entropy else logps


@pytest.fixture(scope="module")
def batch(tiny):
    g = torch.Generator().manual_seed(0)
    vocab, pad = tiny.model.config.vocab_size, tiny.tokenizer.pad_token_id
    prompt_lengths = torch.tensor([5, 3, 4, 5, 2, 5])
    completion_lengths = torch.tensor([7, 3, 5, 1, 6, 4])  # padding everywhere but row 0
    prompt_mask = (torch.arange(P).flip(0)[None] < prompt_lengths[:, None]).long()  # (B, P) left padding
    completion_mask = (torch.arange(T)[None] < completion_lengths[:, None]).long()  # (B, T) right padding
    prompt_ids = torch.randint(5, vocab, (B, P), generator=g).masked_fill(prompt_mask == 0, pad)
    completion_ids = torch.randint(5, vocab, (B, T), generator=g).masked_fill(completion_mask == 0, pad)
    b = SimpleNamespace(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask
    )
    with torch.no_grad():
        logps = _completion_logps(tiny.model, b)  # (B, T)
    # old = current - (per-row shift + noise): sequence ratios ≈ e^±0.5, token ratios spread around them, so
    # rows 0/1 are high/low clipped, row 2 (A < 0, ρ ≈ 1.65) is cut by delta = 1.5, rows 4/5 are near on-policy.
    shift = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.0, 0.1]).unsqueeze(1)  # (B, 1)
    b.old = logps - shift - 0.2 * torch.randn(B, T, generator=g)
    b.ref = logps + 0.3 * torch.randn(B, T, generator=g)
    b.advantages = torch.tensor([1.0, -1.0, -0.8, 0.6, 0.3, -0.2])
    # The sampler's (vLLM's) log-probs: ahead of the current policy on the A < 0 rows, so the off-policy mask
    # judged against them drops other rows than judged against old (row 1 only: mean log(old/π) ≈ 0.5).
    b.sampling = b.old + 0.1 * torch.randn(B, T, generator=g) + (b.advantages < 0).float().unsqueeze(1)
    # Deliberately != completion_mask.sum(), so that the test sees which count dapo's normaliser uses.
    b.num_items = completion_mask.sum() + 5
    b.logps = logps
    return b


def _trainer(tiny, model, reward_funcs, *, batch_size=B, rollout_func=None, **config) -> trl.GRPOTrainer:
    args = trl.GRPOConfig(
        output_dir=str(tiny.out),
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        per_device_train_batch_size=batch_size,
        num_generations=G,
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=TEMPERATURE,
        epsilon=EPSILON,
        gradient_accumulation_steps=1,  # so steps_per_generation = 1 too
        activation_checkpointing=False,
        disable_dropout=True,
        **config,
    )
    dataset = Dataset.from_dict({"prompt": ["1+1="] * batch_size, "idx": list(range(batch_size))})
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tiny.tokenizer,
        rollout_func=rollout_func,
    )
    trainer.model.train()
    # Set by Trainer's training loop (len of the accumulation window); _compute_loss divides by it.
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


# --------------------------------------------------------------------------------------- the loss
LOSS_CASES = [
    dict(
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=beta,
        epsilon_high=epsilon_high,
        delta=delta,
        use_bias_correction_kl=bias_correction,
    )
    for loss_type, level, beta, epsilon_high, delta in itertools.product(
        ["grpo", "bnpo", "dr_grpo", "dapo"], ["token", "sequence"], [0.0, 0.04], [None, 0.28], [None, 1.5]
    )
    for bias_correction in ([True, False] if beta else [True])  # without KL the flag does nothing
]
# delta below the upper clip bound: TRL computes the clip metrics on the delta-clamped ratio.
LOSS_CASES += [
    dict(
        loss_type="dapo",
        importance_sampling_level=level,
        beta=0.04,
        epsilon_high=None,
        delta=1.1,
        use_bias_correction_kl=True,
    )
    for level in ["token", "sequence"]
]
# The other four loss types over their own options.
LEVELS, BETAS = ["token", "sequence"], [0.0, 0.04]
LOSS_CASES += [
    dict(loss_type="cispo", importance_sampling_level=level, beta=beta, epsilon_high=epsilon_high)
    for level, beta, epsilon_high in itertools.product(LEVELS, BETAS, [None, 1.2])  # None: TRL caps ρ at epsilon
]
LOSS_CASES += [
    dict(loss_type="sapo", importance_sampling_level=level, beta=beta, **temperatures)
    for level, beta, temperatures in itertools.product(
        LEVELS, BETAS, [{}, dict(sapo_temperature_pos=0.5, sapo_temperature_neg=2.0)]
    )
]
LOSS_CASES += [
    dict(loss_type="luspo", importance_sampling_level=level, beta=beta, epsilon_high=epsilon_high, delta=delta)
    for level, beta, (epsilon_high, delta) in itertools.product(LEVELS, BETAS, [(None, None), (0.28, 1.5)])
]
VESPO_PARAMS = dict(vespo_k_pos=1.0, vespo_lambda_pos=0.5, vespo_k_neg=1.5, vespo_lambda_neg=4.0)
LOSS_CASES += [
    dict(loss_type="vespo", importance_sampling_level=level, beta=beta, **params)
    for level, beta, params in itertools.product(LEVELS, BETAS, [{}, VESPO_PARAMS])
]
ALL_LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
# DeepSeek-V3.2's off-policy sequence mask against π_old, every loss type: row 1 (A < 0, mean log(old/π) ≈ 0.5) goes.
OFF_POLICY_CASES = [dict(loss_type=t, off_policy_mask_threshold=0.3) for t in ALL_LOSS_TYPES]

SHORT = {"loss_type": "", "importance_sampling_level": "", "beta": "b", "epsilon_high": "eh", "delta": "d"}
SHORT |= {"use_bias_correction_kl": "bc", "off_policy_mask_threshold": "opm", "top_entropy_quantile": "q"}


def _case_id(case: dict) -> str:
    return "-".join(f"{SHORT.get(k, k + '=')}{v}" for k, v in case.items())


CLIP_KEYS = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]
METRIC_KEYS = {"cispo": ["cispo_clip_ratio"], "sapo": [], "vespo": ["vespo/phi_seq_mean"]}  # else CLIP_KEYS


def _inputs(batch, **extra) -> dict:
    return {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "completion_ids": batch.completion_ids,
        "completion_mask": batch.completion_mask,
        "advantages": batch.advantages,
        "old_per_token_logps": batch.old,
        "ref_per_token_logps": batch.ref,
        "num_items_in_batch": batch.num_items,
        **extra,
    }


def _trl_loss(tiny, model, case: dict, inputs: dict, use_vllm: bool = False):
    """TRL's _compute_loss (and backward) on `inputs`; returns (trainer, loss, the metrics it logged)."""
    trainer = _trainer(tiny, model, _zero_reward, **case)
    if use_vllm:  # then _compute_loss applies inputs["importance_sampling_ratio"]; no engine is needed for that
        trainer.use_vllm = True
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return trainer, loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _assert_same(loss, trl_loss, mine, trainer) -> None:
    """Same loss and the same gradient on every parameter, to float32 round-off."""
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), rtol=RTOL, atol=ATOL)
    trl_params = dict(trainer.model.named_parameters())
    for name, p in mine.named_parameters():
        assert p.grad is not None and trl_params[name].grad is not None, name
        torch.testing.assert_close(
            p.grad, trl_params[name].grad, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def _assert_metrics(case: dict, metrics: dict, logged: dict) -> None:
    keys = METRIC_KEYS.get(case["loss_type"], CLIP_KEYS) + (["kl"] if case.get("beta") else [])
    assert ("kl" in metrics) == bool(case.get("beta"))
    for key in keys:
        assert metrics[key] == pytest.approx(logged[key], rel=RTOL, abs=ATOL), key


@pytest.mark.parametrize("case", LOSS_CASES + OFF_POLICY_CASES, ids=_case_id)
def test_policy_loss_matches_trl(case, tiny, batch):
    theirs, mine = copy.deepcopy(tiny.model), copy.deepcopy(tiny.model)  # copies made before TRL patches forward
    trainer, trl_loss, logged = _trl_loss(tiny, theirs, case, _inputs(batch))

    mine.train()
    loss, metrics = policy_loss(
        _completion_logps(mine, batch),
        batch.old,
        batch.ref,
        batch.advantages,
        batch.completion_mask,
        epsilon=EPSILON,
        max_completion_length=MAX_COMPLETION_LENGTH,
        num_items=batch.num_items,
        **case,
    )
    loss.backward()

    _assert_same(loss, trl_loss, mine, trainer)
    _assert_metrics(case, metrics, logged)
    if case["loss_type"] in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        assert metrics["clip_ratio/low_mean"] > 0 or metrics["clip_ratio/high_mean"] > 0  # clipping did happen
    elif case["loss_type"] == "cispo":
        assert 0 < metrics["cispo_clip_ratio"] < 1
    elif case["loss_type"] == "vespo":
        assert metrics["vespo/phi_seq_mean"] != pytest.approx(1.0)  # the Gamma weights did reweigh


@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("loss_type", ALL_LOSS_TYPES)
def test_vllm_weights_and_off_policy_mask_match_trl(loss_type, threshold, tiny, batch):
    """Completions from another engine: its token-level importance weights (VESPO folds them into w) and, with
    the off-policy mask, its log-probs as the behaviour policy (every A < 0 row drifts past 0.3 from them)."""
    case = dict(loss_type=loss_type, beta=0.04, off_policy_mask_threshold=threshold)
    weights = importance_sampling_weights(batch.old, batch.sampling, batch.completion_mask, "token_truncate", 0.5, 2.0)
    assert weights.min() == 0.5 and weights.max() < 2.0  # the weights do clip
    theirs, mine = copy.deepcopy(tiny.model), copy.deepcopy(tiny.model)
    extra = {"importance_sampling_ratio": weights, "sampling_per_token_logps": batch.sampling}
    trainer, trl_loss, logged = _trl_loss(tiny, theirs, case, _inputs(batch, **extra), use_vllm=True)

    mine.train()
    loss, metrics = policy_loss(
        _completion_logps(mine, batch),
        batch.old,
        batch.ref,
        batch.advantages,
        batch.completion_mask,
        epsilon=EPSILON,
        max_completion_length=MAX_COMPLETION_LENGTH,
        num_items=batch.num_items,
        sampling_weights=weights,
        behaviour_logps=batch.sampling,
        **case,
    )
    loss.backward()
    _assert_same(loss, trl_loss, mine, trainer)
    _assert_metrics(case, metrics, logged)


ENTROPY_CASES = [
    dict(loss_type=t, entropy_coef=0.05, top_entropy_quantile=q) for t in ("grpo", "dapo", "luspo") for q in (1.0, 0.5)
]


def _aha_entropy_loss(mine, batch, case: dict, coef: float):
    """aha's micro-batch loss with the entropy bonus, as GRPOTrainer.compute_loss composes it (accumulation 1):
    the policy term on the forking tokens (top_entropy_quantile), minus coef × their mean entropy."""
    logps, entropy = _completion_logps(mine, batch, with_entropy=True)  # (B, T), (B, T)
    mask = batch.completion_mask
    q = case.get("top_entropy_quantile", 1.0)
    ent_mask = top_entropy_mask(entropy.detach(), mask, q) if q < 1 else None
    loss, metrics = policy_loss(
        logps,
        batch.old,
        batch.ref,
        batch.advantages,
        mask,
        loss_type=case["loss_type"],
        epsilon=EPSILON,
        max_completion_length=MAX_COMPLETION_LENGTH,
        num_items=batch.num_items,
        entropy_mask=ent_mask,
    )
    effective = mask if ent_mask is None else ent_mask
    return loss - coef * entropy_bonus(entropy, effective), loss.detach(), entropy.detach(), effective


@pytest.mark.parametrize("case", ENTROPY_CASES, ids=_case_id)
def test_entropy_bonus_matches_trl(case, tiny, batch):
    theirs, mine = copy.deepcopy(tiny.model), copy.deepcopy(tiny.model)
    trainer, trl_loss, logged = _trl_loss(tiny, theirs, case, _inputs(batch))
    mine.train()
    loss, policy, _, effective = _aha_entropy_loss(mine, batch, case, case["entropy_coef"])
    loss.backward()
    _assert_same(loss, trl_loss, mine, trainer)
    assert policy.item() == pytest.approx(logged["policy_loss"], rel=RTOL, abs=ATOL)
    assert (loss.detach() - policy).abs() > 1e-3  # the bonus is there
    if case["top_entropy_quantile"] < 1:
        assert 0 < effective.sum() < batch.completion_mask.sum()  # and only on the forking tokens


@pytest.mark.parametrize("target", [100.0, 0.1], ids=["entropy-below-target", "entropy-above-target"])
def test_adaptive_entropy_matches_trl(target, tiny, batch):
    """Three optimiser steps of one micro-batch each: the coefficient applied (none in the first step, then only
    while the last step's entropy is at or below the target), the one carried to the next step, loss and
    gradients."""
    from aha.train.entropy import EntropyControl

    case = dict(
        loss_type="grpo",
        entropy_coef=0.1,
        use_adaptive_entropy=True,
        entropy_coef_delta=0.05,
        entropy_coef_min=0.02,
        entropy_coef_max=0.2,
        entropy_target=target,
    )
    theirs, mine = copy.deepcopy(tiny.model), copy.deepcopy(tiny.model)
    trainer = _trainer(tiny, theirs, _zero_reward, **case)
    assert trainer.accelerator.sync_gradients  # every _compute_loss ends an accumulation window
    control = EntropyControl(SimpleNamespace(**case))
    one_process = SimpleNamespace(num_processes=1)
    mine.train()
    applied = []
    for _ in range(3):
        trainer.model.zero_grad(set_to_none=True)
        mine.zero_grad(set_to_none=True)
        trl_loss = trainer._compute_loss(trainer.model, _inputs(batch))
        trl_loss.backward()
        applied.append(control.applied())
        loss, _, entropy, effective = _aha_entropy_loss(mine, batch, case, applied[-1])
        loss.backward()
        control.observe(entropy, effective)
        control.step(one_process)
        _assert_same(loss, trl_loss, mine, trainer)
        assert control.coef == pytest.approx(trainer.entropy_coef)
        assert control.last_entropy == pytest.approx(trainer._last_world_entropy, rel=RTOL)
    if target > 10:  # the tiny model's entropy (~4 nats) is below: the bonus starts in step 2 and grows to the cap
        assert applied == pytest.approx([0.0, 0.15, 0.2])
    else:  # above: never applied, the coefficient decays to its floor
        assert applied == [0.0, 0.0, 0.0] and control.coef == pytest.approx(0.02)


def test_batch_exercises_every_option(batch):
    """The parity matrix is only meaningful if each option changes the loss on this batch."""

    def value(**kw):
        kw = {"loss_type": "dapo", "beta": 0.04, "num_items": batch.num_items, **kw}
        return policy_loss(batch.logps, batch.old, batch.ref, batch.advantages, batch.completion_mask, **kw)[0].item()

    for level in ("token", "sequence"):
        assert value(importance_sampling_level=level, epsilon_high=0.28) != value(importance_sampling_level=level)
        assert value(importance_sampling_level=level, delta=1.5) != value(importance_sampling_level=level)
        assert value(importance_sampling_level=level, use_bias_correction_kl=False) != value(
            importance_sampling_level=level
        )
        assert value(importance_sampling_level=level, beta=0.0) != value(importance_sampling_level=level)
        for t in ("cispo", "sapo", "luspo", "vespo"):
            assert value(loss_type=t, importance_sampling_level=level) != value(importance_sampling_level=level)
        assert value(loss_type="cispo", importance_sampling_level=level, epsilon_high=1.2) != value(
            loss_type="cispo", importance_sampling_level=level
        )
        assert value(loss_type="sapo", importance_sampling_level=level, sapo_temperature_pos=0.5) != value(
            loss_type="sapo", importance_sampling_level=level
        )
        assert value(loss_type="sapo", importance_sampling_level=level, sapo_temperature_neg=2.0) != value(
            loss_type="sapo", importance_sampling_level=level
        )
        assert value(loss_type="luspo", importance_sampling_level=level, delta=1.5) != value(
            loss_type="luspo", importance_sampling_level=level
        )
    for name, v in VESPO_PARAMS.items():  # each of VESPO's four parameters matters
        assert value(loss_type="vespo", **{name: v}) != value(loss_type="vespo"), name
    for t in ALL_LOSS_TYPES:
        assert value(loss_type=t, off_policy_mask_threshold=0.3) != value(loss_type=t), t
        assert value(loss_type=t, off_policy_mask_threshold=0.3, behaviour_logps=batch.sampling) != value(
            loss_type=t, off_policy_mask_threshold=0.3
        ), t
    assert value(importance_sampling_level="token") != value(importance_sampling_level="sequence")
    losses = {t: value(loss_type=t, max_completion_length=MAX_COMPLETION_LENGTH) for t in ("grpo", "bnpo", "dr_grpo")}
    assert len(set(losses.values()) | {value()}) == 4


# --------------------------------------------------------------------------------------- advantages
def _table_rewards(table: torch.Tensor):
    """K reward functions; function k returns column k of `table` for the rows named by the `idx` column
    (None where the table holds NaN, which TRL turns back into NaN)."""

    def make(k):
        def reward(completions, idx, **kwargs):
            return [None if math.isnan(table[i, k]) else table[i, k].item() for i in idx]

        reward.__name__ = f"table_{k}"
        return reward

    return [make(k) for k in range(table.size(1))]


def _fixed_rollout(prompts, trainer):
    """Stands in for sampling: fixed prompt and completion ids (the advantages do not depend on them)."""
    eos = trainer.processing_class.eos_token_id
    return {
        "prompt_ids": [[10, 11, 12]] * len(prompts),
        "completion_ids": [[13 + i % 3, eos] for i in range(len(prompts))],
        "logprobs": None,
    }


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'", "ignore:`is_gradient_checkpointing` is deprecated")
@pytest.mark.parametrize(
    "aggregation, scale_rewards",
    [("sum_then_normalize", s) for s in ("group", "batch", "none")] + [("normalize_then_sum", "group")],
)
def test_compute_advantages_matches_trl(aggregation, scale_rewards, tiny):
    n, k = 12, 3  # 4 groups of G = 3
    g = torch.Generator().manual_seed(1)
    table = torch.randn(n, k, generator=g)
    table[torch.rand(n, k, generator=g) < 0.25] = float("nan")  # function does not apply to this sample
    table[4] = float("nan")  # unscorable row: TRL leaves it out of its group's mean/std, advantage 0
    table[9:11] = float("nan")  # group 3 keeps a single scorable row: NaN group std, advantage 0
    table[11, 0] = 2.0
    weights = [1.0, 0.5, 2.0]
    assert not torch.isnan(table).all(dim=1)[[0, 1, 2, 3, 5, 6, 7, 8, 11]].any()

    model = copy.deepcopy(tiny.model)
    trainer = _trainer(
        tiny,
        model,
        _table_rewards(table),
        batch_size=n,
        rollout_func=_fixed_rollout,
        scale_rewards=scale_rewards,
        reward_weights=weights,
        multi_objective_aggregation=aggregation,
    )
    inputs = [{"prompt": "1+1=", "idx": i} for i in range(n)]
    with torch.no_grad():
        out = trainer._generate_and_score_completions(inputs)

    ours = compute_advantages(
        table, G, scale_rewards=scale_rewards, reward_weights=weights, multi_objective_aggregation=aggregation
    )
    torch.testing.assert_close(ours, out["advantages"], rtol=RTOL, atol=ATOL)
    assert out["advantages"][4] == 0 and out["advantages"][9:11].eq(0).all()  # unscorable rows
    # sum first: row 11 is its group's only scorable row, A = 0; normalise first: its z's are NaN (std of one row),
    # so its reward is 0 and the batch-level standardisation still gives it an advantage
    assert (out["advantages"][11] == 0) == (aggregation == "sum_then_normalize")
    assert ours.ne(0).sum() >= 7  # the comparison is not between zeros
    if aggregation == "normalize_then_sum":
        summed = compute_advantages(table, G, reward_weights=weights)
        assert not torch.allclose(ours, summed, atol=1e-3)  # the two modes differ on this table
