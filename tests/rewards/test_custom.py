"""Custom rewards (``module:function``, ``file.py:function``), ``resolve`` and what every registered reward obeys."""

from __future__ import annotations

import math
import time

import pytest

from aha.rewards import REGISTRY, get, load_custom, names, resolve

MODULE = """
def brevity(completions, *, scale=1.0, **kwargs):
    return [scale / (1 + len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]

class Holder:
    @staticmethod
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``aha_test_user_rewards`` importable from sys.path, and the same code as a file path."""
    (tmp_path / "aha_test_user_rewards.py").write_text(MODULE)
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_custom_module_and_file(user_module):
    fn = load_custom("aha_test_user_rewards:brevity")
    assert fn(["abc", ""]) == [0.25, 1.0]
    from_file = load_custom(f"{user_module / 'aha_test_user_rewards.py'}:brevity")
    assert from_file([[{"role": "assistant", "content": "abc"}]]) == [0.25]
    assert load_custom("aha_test_user_rewards:Holder.always_one")(["a", "b"]) == [1.0, 1.0]


def test_load_custom_relative_file(user_module, monkeypatch):
    monkeypatch.chdir(user_module)
    assert load_custom("./aha_test_user_rewards.py:brevity")(["abc"]) == [0.25]
    assert load_custom("aha_test_user_rewards.py:brevity")(["abc"]) == [0.25]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("aha_test_user_rewards:missing", "has no attribute 'missing'"),
        ("aha_test_user_rewards:NOT_CALLABLE", "not a callable"),
        ("broken_rewards:f", "importing 'broken_rewards' failed: RuntimeError: boom"),
        ("justaname", "expected 'module:function'"),
        (":f", "expected 'module:function'"),
        ("aha_test_user_rewards:", "expected 'module:function'"),
    ],
)
def test_load_custom_errors_name_the_spec(user_module, spec, match):
    with pytest.raises(ValueError, match="custom reward") as e:
        load_custom(spec)
    assert repr(spec) in str(e.value) and match in str(e.value)


def test_load_custom_kind_names_what_the_function_is_for(user_module):
    """aha.tools loads tools with the same loader: its errors say "custom tool", the default stays "custom reward"."""
    with pytest.raises(ValueError, match="^custom tool 'aha_test_user_rewards:missing': .* no attribute"):
        load_custom("aha_test_user_rewards:missing", kind="custom tool")
    with pytest.raises(ValueError, match="^custom tool .*nope.py:f': no file"):
        load_custom(f"{user_module / 'nope.py'}:f", kind="custom tool")


def test_load_custom_file_errors(user_module):
    with pytest.raises(ValueError, match="no file"):
        load_custom(f"{user_module / 'nope.py'}:f")
    with pytest.raises(ValueError, match="RuntimeError: boom"):
        load_custom(f"{user_module / 'broken_rewards.py'}:f")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_custom(f"{user_module / 'aha_test_user_rewards.py'}:nope")


def test_a_relative_file_is_read_from_base_and_the_message_says_where(user_module, tmp_path, monkeypatch):
    from aha.rewards.custom import anchored

    monkeypatch.chdir(tmp_path.parent)  # not where the file is
    assert load_custom("aha_test_user_rewards.py:brevity", base=user_module)(["abc"]) == [0.25]
    fn, _ = resolve({"name": "aha_test_user_rewards.py:brevity", "scale": 2.0}, base=user_module)
    assert fn(completions=["abc"]) == [0.5]
    with pytest.raises(ValueError) as e:
        load_custom("rw.py:f", base=user_module)
    assert f"no file '{user_module / 'rw.py'}' (a relative path is read from the recipe's directory" in str(e.value)
    with pytest.raises(ValueError) as e:
        load_custom("rw.py:f")  # the Python API and command-line flags: the working directory
    assert f"no file '{tmp_path.parent / 'rw.py'}' (a relative path is read from the working directory" in str(e.value)
    assert anchored("rw.py:f", "/a") == "/a/rw.py:f"
    assert anchored({"name": "sub/rw.py:f", "weight": 2}, "/a") == {"name": "/a/sub/rw.py:f", "weight": 2}
    assert anchored("/abs/rw.py:f", "/a") == "/abs/rw.py:f" and anchored("format", "/a") == "format"
    assert anchored("pkg.mod:f", "/a") == "pkg.mod:f"  # a module, found on sys.path


def test_resolve_names_dicts_and_custom(user_module):
    fn, weight = resolve("accuracy")
    assert fn.__name__ == "accuracy" and weight == 1.0
    fn, weight = resolve({"name": "length", "ideal_length": 3, "weight": 2})
    assert fn.__name__ == "length" and weight == 2.0 and fn(completions=["abcde"]) == [-2.0]
    fn, weight = resolve("aha_test_user_rewards:brevity")
    assert fn.__name__ == "brevity" and weight == 1.0
    fn, weight = resolve({"name": "aha_test_user_rewards:brevity", "scale": 2.0, "weight": 0.5})
    assert fn.__name__ == "brevity" and weight == 0.5 and fn(completions=["abc"]) == [0.5]

    def mine(completions, **kwargs):
        return [0.0] * len(completions)

    assert resolve(mine) == (mine, 1.0)


def test_resolve_errors(user_module):
    with pytest.raises(ValueError, match="unknown reward 'acuracy'.*did you mean accuracy"):
        resolve("acuracy")
    with pytest.raises(ValueError, match="needs a 'name'"):
        resolve({"weight": 1.0})
    with pytest.raises(ValueError, match="reward 'length': 'weight' must be a number"):
        resolve({"name": "length", "weight": "heavy"})
    with pytest.raises(ValueError, match="reward 'length': 'weight' must be a number"):
        resolve({"name": "length", "weight": True})
    with pytest.raises(ValueError, match="reward 'length'.*'ideal_length'"):
        resolve({"name": "length", "ideal_length": "50"})
    with pytest.raises(ValueError, match="reward 'length' has no parameter 'ideal'"):
        resolve({"name": "length", "ideal": 50})
    with pytest.raises(ValueError, match="custom reward 'nope_xyz:f'"):
        resolve({"name": "nope_xyz:f"})
    with pytest.raises(ValueError, match="a reward must be"):
        resolve(3)  # type: ignore[arg-type]


# --- every registered reward -----------------------------------------------------------------------------

TEXTS = [
    "<think>\nStep 1: 2 + 2 = 4\n</think>\n<answer>\n4\n</answer>",
    "",
    r"<reasoning>\nFirst, add.\n</reasoning>\n<answer>\n\boxed{4}\n</answer>" + " tail" * 10,
]
COLUMNS = {"answer": ["4", "4", "4"], "solution": ["4", "4", "4"], "trainer_state": None}
IDS = [[1] * 20, [], [1] * 40]


def test_all_expected_rewards_are_registered():
    expected = {"length", "xmlcount", "strict_format", "soft_format", "int_answer", "correctness", "format"}
    expected |= {"accuracy", "tag_count", "reasoning_steps", "kimi_length", "cosine", "repetition_penalty"}
    assert expected | {"soft_overlong"} <= set(names())


# rewards that read a task's own columns (required arguments: recipes and the trainer check them against the data
# set's columns): their cases run with their task's rows, in tests/tasks/test_reasoning_gym.py
TASK_COLUMNS = {"rg_score": "rg_entry"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_reward_standard_equals_conversational(name):
    fn = get(name)
    assert fn.__name__ == name and fn.__qualname__ == name
    prompts = ["What is 2 + 2?"] * 3
    if name in TASK_COLUMNS:
        pytest.skip(f"{name} needs its task's {TASK_COLUMNS[name]} column: tested with its task's rows")
    standard = fn(prompts=prompts, completions=TEXTS, completion_ids=IDS, **COLUMNS)
    conversational = fn(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": t}] for t in TEXTS],
        completion_ids=IDS,
        **COLUMNS,
    )
    assert standard == conversational
    assert len(standard) == 3 and all(v is None or isinstance(v, float) for v in standard)
    assert fn(prompts=[], completions=[], completion_ids=[], answer=[], solution=[]) == []


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_reward_handles_a_very_long_completion(name):
    long_text = "<think>\n" + "so we add the numbers and carry. " * 6_000 + "\n</think>\n<answer>\n4\n</answer>"
    if name in TASK_COLUMNS:
        pytest.skip(f"{name} needs its task's {TASK_COLUMNS[name]} column: tested with its task's rows")
    start = time.perf_counter()
    values = get(name)(completions=[long_text], completion_ids=[[1] * 40_000], answer=["4"], solution=["4"])
    assert len(values) == 1 and (values[0] is None or math.isfinite(values[0]))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if REGISTRY[n].params()))
def test_every_parameter_rejects_a_wrong_type(name):
    for param in REGISTRY[name].params():
        with pytest.raises(ValueError, match=f"reward '{name}'.*'{param}'"):
            get(name, **{param: [1]})


def test_registry_listing_matches_signatures():
    assert "cos(π" in (REGISTRY["cosine"].fn.__doc__ or "")
    assert REGISTRY["soft_overlong"].params() == {"max_completion_len": 16384, "soft_punish_cache": 4096}
    assert REGISTRY["correctness"].params() == {"value": 1.0, "answer_format": "auto"}
