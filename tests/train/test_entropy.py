"""aha.train.entropy.EntropyControl: the entropy bonus's coefficient over a run (static, adaptive, resumed)."""

import math
from types import SimpleNamespace

import pytest
import torch

from aha.train.config import GRPOConfig
from aha.train.entropy import EntropyControl


class TwoProcesses:
    """Stands in for accelerate with two processes whose window entropy sums add up to twice this one's."""

    num_processes = 2
    device = torch.device("cpu")

    def reduce(self, t, reduction):
        assert reduction == "sum"
        return t * 2


def test_static_coefficient_never_moves():
    control = EntropyControl(GRPOConfig(entropy_coef=0.05))
    assert control.enabled and not control.adaptive and control.applied() == 0.05
    control.observe(torch.ones(2, 3), torch.ones(2, 3))
    control.step(SimpleNamespace(num_processes=1))
    assert control.applied() == 0.05 and control.coef == 0.05
    assert not EntropyControl(GRPOConfig()).enabled  # entropy_coef 0, not adaptive: no bonus, no entropy gradient


def test_adaptive_over_processes_and_resumed():
    cfg = GRPOConfig(use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=1.0, entropy_coef_delta=0.05)
    control = EntropyControl(cfg)
    assert control.enabled and control.applied() == 0.0 and control.last_entropy == math.inf
    entropy = torch.tensor([[0.5, 2.0, 9.0], [0.7, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # the 9.0 and the padding are left out
    control.observe(entropy, mask)
    control.step(TwoProcesses())
    assert control.last_entropy == pytest.approx((0.5 + 2.0 + 0.7) / 3)  # the window's mean over both processes
    assert control.coef == pytest.approx(0.05) and control.applied() == 0.0  # 1.07 > 1.0: down, and off
    control.observe(torch.full((1, 2), 0.3), torch.ones(1, 2))  # a fresh window: 0.3 <= 1.0
    control.step(TwoProcesses())
    assert control.coef == pytest.approx(0.1) and control.applied() == pytest.approx(0.1)
    restored = EntropyControl(cfg)
    restored.load_state_dict(control.state_dict())
    assert (restored.coef, restored.last_entropy, restored.applied()) == (
        control.coef,
        control.last_entropy,
        control.applied(),
    )
    assert restored.last_entropy == pytest.approx(0.3)
