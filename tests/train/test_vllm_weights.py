"""The vLLM importance-sampling correction (TRL 1.16's vllm_importance_sampling_* semantics), without vLLM."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from aha import GRPOConfig
from aha.train.vllm import sampling_weights


def _args(mode, clip_min=None, clip_max=3.0):
    # the GRPOConfig fields the correction reads (a real GRPOConfig with use_vllm=True needs vllm installed)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    values = dict(
        vllm_importance_sampling_mode=mode,
        vllm_importance_sampling_clip_min=clip_min,
        vllm_importance_sampling_clip_max=clip_max,
    )
    assert set(values) <= fields
    return SimpleNamespace(**values)


OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])  # (B, T)
SAMPLED = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -0.2, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last token of row 1 is padding


def test_token_truncate_clamps_each_token():
    w = sampling_weights(OLD, SAMPLED, {"completion_mask": MASK}, _args("token_truncate", clip_min=0.5))
    expect = torch.tensor([[math.exp(0.5), 0.5, 1.0], [1.0, 1.0, 1.0]])  # exp(-1)=0.37 -> 0.5; padding -> 1
    torch.testing.assert_close(w, expect)


def test_sequence_mask_zeroes_sequences_outside_the_band():
    w = sampling_weights(OLD, SAMPLED, {"completion_mask": MASK}, _args("sequence_mask", clip_max=1.0))
    # row 0: sum of log-ratios = 0.5 - 1 + 0 = -0.5 -> exp = 0.61 kept; row 1: 0 -> 1 kept
    torch.testing.assert_close(w, torch.tensor([[math.exp(-0.5)] * 3, [1.0] * 3]))
    w = sampling_weights(OLD, SAMPLED, {"completion_mask": MASK}, _args("sequence_mask", clip_min=0.7))
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [1.0] * 3]))  # row 0 (0.61 < 0.7) masked out


@pytest.mark.parametrize("mode", ["token_mask", "sequence_truncate"])
def test_equal_policies_give_unit_weights(mode):
    w = sampling_weights(OLD, OLD.clone(), {"completion_mask": MASK}, _args(mode, clip_min=0.1))
    torch.testing.assert_close(w, torch.ones_like(OLD))


def test_engine_context_fits_the_longest_allowed_prompt_not_the_first_batch():
    from aha.train.vllm import max_model_len

    def trainer(prompt, completion, engine=None, positions=512):
        args = SimpleNamespace(max_prompt_length=prompt, max_completion_length=completion, vllm_max_model_length=engine)
        return SimpleNamespace(
            args=args, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))
        )

    assert max_model_len(trainer(128, 64)) == 192
    assert max_model_len(trainer(512, 64)) == 512  # capped by the model's positions
    assert max_model_len(trainer(128, 64, engine=300)) == 300  # the user's choice wins
    assert max_model_len(trainer(None, 64)) is None  # prompts not truncated: the model's own limit
