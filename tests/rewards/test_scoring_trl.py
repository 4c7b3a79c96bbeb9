"""aha.rewards.scoring with TRL 1.16's full reward-function contract: the trainer keyword arguments
(``trainer_state``, ``log_extra``, ``log_metric``), ``async def`` functions run concurrently, and TRL's warning
for a sample no function scores."""

import asyncio
import logging

import pytest

from aha.rewards.scoring import RewardLogs, accepted, is_async, score

PROMPTS = ["p0", "p1"]
COMPLETIONS = ["a", "bb"]
IDS = [[1], [2, 3]]


def _score(funcs, trainer_kwargs=None, columns=None, on_error="raise"):
    return score(funcs, PROMPTS, COMPLETIONS, IDS, columns or {}, None, on_error, {}, trainer_kwargs)


def test_trainer_kwargs_reach_functions_that_take_them():
    logs = RewardLogs()
    state = object()
    seen = {}

    def with_kwargs(completions, **kwargs):
        seen["kwargs"] = sorted(kwargs)
        kwargs["log_metric"]("my/metric", 2.0)
        kwargs["log_extra"]("why", ["x", "y"])
        return [1.0, 2.0]

    def named(prompts, completions, completion_ids, answer, trainer_state):
        seen["state"] = trainer_state
        return [0.0, 0.0]

    def plain(prompts, completions, completion_ids, answer):  # an aha function of before: nothing new is passed
        return [3.0, 3.0]

    kw = {"trainer_state": state, "log_extra": logs.log_extra, "log_metric": logs.log_metric}
    out = _score([with_kwargs, named, plain], kw, columns={"answer": ["1", "2"]})
    assert out.tolist() == [[1.0, 0.0, 3.0], [2.0, 0.0, 3.0]]
    assert seen["kwargs"] == ["answer", "completion_ids", "log_extra", "log_metric", "prompts", "trainer_state"]
    assert seen["state"] is state
    metrics, extra = logs.take()
    assert metrics == {"my/metric": [2.0]} and extra == {"why": ["x", "y"]}
    assert logs.take() == ({}, {})
    assert accepted(plain, list(kw)) == []


def test_async_functions_run_concurrently():
    # each waits for the other to have started: run one after the other, they would wait forever
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def first(completions, **kwargs):
        started["a"].set()
        await asyncio.wait_for(started["b"].wait(), timeout=10)
        return [1.0] * len(completions)

    async def second(completions, **kwargs):
        started["b"].set()
        await asyncio.wait_for(started["a"].wait(), timeout=10)
        return [2.0] * len(completions)

    class Judge:  # an object with an async __call__ (TRL's is_async_callable form)
        async def __call__(self, completions, **kwargs):
            return [float(len(c)) for c in completions]

    assert is_async(first) and is_async(Judge()) and not is_async(len)
    out = _score([first, lambda completions, **kw: [0.0, 0.0], second, Judge()])
    assert out.tolist() == [[1.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 2.0]]


def test_async_function_errors_name_the_function_and_the_sample():
    async def broken(completions, **kwargs):
        if any(c == "bb" for c in completions):
            raise RuntimeError("judge down")
        return [1.0] * len(completions)

    with pytest.raises(ValueError, match=r"'broken' raised on sample 1.*judge down"):
        _score([broken])
    out = _score([broken], on_error="skip")
    assert out[0, 0] == 1.0 and out[1, 0] != out[1, 0]  # the failing sample: None (NaN)


def test_all_none_for_a_sample_warns_as_trl(caplog):
    def half(completions, **kwargs):
        return [None, 1.0]

    def none(completions, **kwargs):
        return [None, None]

    with caplog.at_level(logging.WARNING, logger="aha.rewards"):
        _score([half, none], columns={"answer": ["7", "8"]})
    [record] = [r for r in caplog.records if "All reward functions returned None" in r.getMessage()]
    assert "'prompt': 'p0'" in record.getMessage() and "'answer': '7'" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aha.rewards"):
        _score([half, lambda completions, **kw: [0.0, None]])
    assert not caplog.records
