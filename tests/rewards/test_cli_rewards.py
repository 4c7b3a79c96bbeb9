"""``aha rewards list`` and ``aha rewards show NAME``."""

from __future__ import annotations

import pytest

from aha.cli import main
from aha.rewards import names


def test_rewards_list(capsys):
    assert main(["rewards", "list"]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert name in out, name
    assert "ideal_length=50" in out and "max_penalty=-1.0" in out and "style='think'" in out


def test_rewards_without_action_lists(capsys):
    assert main(["rewards"]) == 0
    assert "soft_overlong" in capsys.readouterr().out


def test_rewards_show(capsys):
    assert main(["rewards", "show", "cosine"]) == 0
    out = capsys.readouterr().out
    for text in ("cosine", "max_len", "1000", "min_value_wrong", "-1.0", "solution (or answer"):
        assert text in out, text
    assert main(["rewards", "show", "correctness"]) == 0
    assert "dataset columns: answer" in capsys.readouterr().out
    assert main(["rewards", "show", "tag_count"]) == 0
    assert "prefill" in capsys.readouterr().out


def test_rewards_show_unknown(capsys):
    assert main(["rewards", "show", "acuracy"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aha rewards: error: unknown reward 'acuracy'") and "accuracy" in err


def test_rewards_bad_action(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rewards", "explain"])
    assert e.value.code == 2
