"""The vLLM importance-sampling correction (TRL 1.16's vllm_importance_sampling_* semantics), without vLLM."""

import dataclasses
import math

import pytest
import torch

from aha import GRPOConfig
from aha.grpo import importance_sampling_weights


def _weights(old, sampled, mask, mode, clip_min=None, clip_max=3.0):
    # GRPOConfig's vllm_importance_sampling_{mode,clip_min,clip_max}, with TRL's defaults
    fields = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert fields["vllm_importance_sampling_mode"] == "sequence_mask"
    assert fields["vllm_importance_sampling_clip_max"] == 3.0
    return importance_sampling_weights(old, sampled, mask, mode, clip_min, clip_max)


OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])  # (B, T)
SAMPLED = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -0.2, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last token of row 1 is padding


def test_token_truncate_clamps_each_token():
    w = _weights(OLD, SAMPLED, MASK, "token_truncate", clip_min=0.5)
    expect = torch.tensor([[math.exp(0.5), 0.5, 1.0], [1.0, 1.0, 1.0]])  # exp(-1)=0.37 -> 0.5; padding -> 1
    torch.testing.assert_close(w, expect)


def test_sequence_mask_zeroes_sequences_outside_the_band():
    w = _weights(OLD, SAMPLED, MASK, "sequence_mask", clip_max=1.0)
    # row 0: sum of log-ratios = 0.5 - 1 + 0 = -0.5 -> exp = 0.61 kept; row 1: 0 -> 1 kept
    torch.testing.assert_close(w, torch.tensor([[math.exp(-0.5)] * 3, [1.0] * 3]))
    w = _weights(OLD, SAMPLED, MASK, "sequence_mask", clip_min=0.7)
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [1.0] * 3]))  # row 0 (0.61 < 0.7) masked out


@pytest.mark.parametrize("mode", ["token_mask", "sequence_truncate"])
def test_equal_policies_give_unit_weights(mode):
    w = _weights(OLD, OLD.clone(), MASK, mode, clip_min=0.1)
    torch.testing.assert_close(w, torch.ones_like(OLD))
