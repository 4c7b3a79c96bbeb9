"""Open R1's rewards, hand-worked values and the traps its users hit."""

from __future__ import annotations

import math
import threading

import pytest

from aha.rewards import get

CANON = "<think>\nadd them\n</think>\n<answer>\n4\n</answer>"


def conv(texts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


def both(fn, texts: list[str], **kwargs) -> list:
    standard = fn(completions=texts, **kwargs)
    assert fn(completions=conv(texts), **kwargs) == standard
    return standard


# --- accuracy --------------------------------------------------------------------------------------------


def test_accuracy_boxed_fraction_equals_decimal_gold():
    fn = get("accuracy")
    assert both(fn, [r"so the answer is $\boxed{1/2}$", r"\boxed{\frac{1}{2}}"], solution=["0.5", "0.5"]) == [1.0, 1.0]
    assert both(fn, ["<answer>0.5</answer>", r"<answer>$\frac12$</answer>"], solution=[r"$\frac{1}{2}$"] * 2) == [
        1.0,
        1.0,
    ]


def test_accuracy_plain_numbers_vs_boxed():
    fn = get("accuracy")
    texts = [
        "<answer>42</answer>",  # plain number in the answer block
        "The answer is 42",  # plain number after an anchor
        r"\boxed{42}",
        "42",  # a bare number is not an answer (no block, box or anchor)
        r"<answer>41</answer> though \boxed{42}",  # the answer block wins
        r"<answer></answer> \boxed{42}",  # an empty block is no answer
    ]
    assert both(fn, texts, solution=["42"] * 6) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_accuracy_unparseable_gold_is_none_not_one():
    fn = get("accuracy")
    assert both(fn, [r"\boxed{3}"] * 3, solution=["no number here", "", None]) == [None, None, None]


def test_accuracy_wrong_and_empty():
    assert both(get("accuracy"), [r"\boxed{3}", "", "<answer>four</answer>"], solution=["4"] * 3) == [0.0, 0.0, 0.0]


def test_accuracy_gold_columns():
    texts = [r"\boxed{7}"]
    assert both(get("accuracy"), texts, answer=["7"]) == [1.0]  # no solution column: the answer column
    assert both(get("accuracy"), texts, solution=["7"], answer=["8"]) == [1.0]  # solution first
    assert both(get("accuracy", gold_column="gold"), texts, gold=["7"], answer=["8"]) == [1.0]
    with pytest.raises(ValueError, match="'accuracy'.*'solution'"):
        get("accuracy")(completions=texts, question=["q"])


def test_accuracy_verifies_gold_first(monkeypatch):
    import math_verify

    calls = []

    def fake_verify(gold, target, **kwargs):
        calls.append((gold, target, kwargs.get("timeout_seconds")))
        return True

    monkeypatch.setattr(math_verify, "verify", fake_verify)
    assert get("accuracy", timeout_seconds=3)(completions=[r"\boxed{2}"], solution=["1"]) == [1.0]
    (gold, target, timeout), *_ = calls
    assert str(gold[0]) == "1" and str(target[0]) == "2" and timeout == 3


def test_accuracy_timeout_param():
    assert get("accuracy", timeout_seconds=0)(completions=[r"\boxed{2}"], solution=["2"]) == [1.0]
    with pytest.raises(ValueError, match="'accuracy'.*'timeout_seconds'"):
        get("accuracy", timeout_seconds="5")


def test_accuracy_outside_the_main_thread():
    out: list = []
    worker = threading.Thread(target=lambda: out.append(get("accuracy")(completions=[r"\boxed{2}"], solution=["2"])))
    worker.start()
    worker.join()
    assert out == [[1.0]]  # math-verify's SIGALRM timer would raise here: we disable it


def test_accuracy_very_long_completion():
    text = "<think>\n" + "1 + 1 = 2. " * 20_000 + "\n</think>\n<answer>\n3\n</answer>"
    assert both(get("accuracy"), [text, "x " * 50_000 + r"\boxed{3}"], solution=["3", "3"]) == [1.0, 1.0]


# --- format and tag_count --------------------------------------------------------------------------------


def test_tag_count():
    fn = get("tag_count")
    texts = [CANON, "<think>a</think><answer>4</answer>", "", "<answer>4</answer>", "no tags"]
    assert both(fn, texts) == [1.0, 1.0, 0.0, 0.5, 0.0]


def test_tag_count_does_not_reward_several_think_blocks():
    fn = get("tag_count")
    # Open R1 counts "<think>\n" and "\n</think>\n", so this second block (no newlines) slips through with 1.0
    sneaky = "<think>\na\n</think>\n<think>b</think>\n<answer>\n4\n</answer>"
    twice = "<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n4\n</answer>"
    assert both(fn, [sneaky, twice]) == [0.5, 0.5]


def test_prefilled_think_template():
    """The chat template wrote "<think>\\n": the completion starts inside the thought.

    Without ``prefill`` the completion lacks its opening tag (format 0, tag_count 0.75); with
    ``prefill="<think>\\n"`` it is scored as the text the model sees, so it is well formed; re-opening
    <think> after the prefill is then a second block and loses tag_count's points.
    """
    completion = "reasoning...\n</think>\n<answer>\n4\n</answer>"
    reopened = "<think>\nreasoning...\n</think>\n<answer>\n4\n</answer>"
    assert both(get("format"), [completion]) == [0.0]
    assert both(get("tag_count"), [completion]) == [0.75]
    assert both(get("format", prefill="<think>\n"), [completion]) == [1.0]
    assert both(get("tag_count", prefill="<think>\n"), [completion, reopened]) == [1.0, 0.75]


def test_format_existing_behaviour():
    fn = get("format")
    texts = [CANON, "<think>a</think> <answer>4</answer>\n", "<answer>4</answer>", "", CANON + " extra"]
    assert both(fn, texts) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert both(get("format", style="reasoning"), ["<reasoning>a</reasoning><answer>4</answer>"]) == [1.0]


# --- reasoning_steps -------------------------------------------------------------------------------------


def test_reasoning_steps():
    fn = get("reasoning_steps")
    texts = [
        "Step 1: add\nStep 2: check",
        "1. a\n2. b\n3. c\n4. d",
        "First, x. Second, y.",
        "- a\n* b",
        "Plan:\n  1. indented item",
        "3.14 is pi and pi is 3.14",
        "",
        "First, a\nNext, b\nFinally, c",
    ]
    assert both(fn, texts) == pytest.approx([2 / 3, 1.0, 2 / 3, 2 / 3, 1 / 3, 0.0, 0.0, 1.0])
    assert both(get("reasoning_steps", min_steps=2), ["Step 1: a Step 2: b"]) == [1.0]
    with pytest.raises(ValueError, match="'reasoning_steps'.*'min_steps'"):
        get("reasoning_steps", min_steps=0)


# --- kimi_length -----------------------------------------------------------------------------------------


def test_kimi_length_per_prompt_group():
    fn = get("kimi_length")
    texts = [r"\boxed{4}", r"\boxed{5}", r"\boxed{4}", r"\boxed{5}", r"\boxed{9}", r"\boxed{9}"]
    prompts = ["p", "p", "p", "p", "q", "q"]
    ids = [[0] * n for n in (10, 20, 30, 10, 7, 7)]
    values = both(fn, texts, prompts=prompts, completion_ids=ids, solution=["4"] * 4 + ["9", "9"])
    # group p: L=10,20,30,10 → λ = 0.5, 0, −0.5, 0.5; correct keeps λ, wrong gets min(0, λ)
    # group q: one length → 0.0
    assert values == [0.5, 0.0, -0.5, 0.0, 0.0, 0.0]


def test_kimi_length_batch_without_prompts_and_unparseable_gold():
    fn = get("kimi_length", unit="characters")
    texts = [r"\boxed{4}", r"\boxed{4} " + "x" * 9, r"\boxed{4}"]  # 9, 19 and 9 characters
    assert both(fn, texts, solution=["4", "4", "??"]) == [0.5, -0.5, None]


# --- cosine ----------------------------------------------------------------------------------------------


def test_cosine_hand_values():
    fn = get("cosine", max_len=100)
    texts = [r"\boxed{1}", r"\boxed{1}", r"\boxed{1}", r"\boxed{1}", r"\boxed{2}", r"\boxed{2}", r"\boxed{2}"]
    ids = [[0] * n for n in (0, 50, 100, 200, 0, 50, 100)]
    values = both(fn, texts, completion_ids=ids, solution=["1"] * 7)
    # correct: 0.5 + 0.25(1 + cos(πL/100)); wrong: −0.5 + (−0.25)(1 + cos(πL/100))
    # L = 200 is clipped to 100: Open R1 would give cos(2π) = 1, i.e. the best reward, to an overlong completion
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.5, -1.0, -0.75, -0.5])


def test_cosine_unparseable_gold_and_params():
    fn = get("cosine", unit="characters", max_len=10)
    assert both(fn, [r"\boxed{1}"], solution=["nothing"]) == [None]
    with pytest.raises(ValueError, match="'cosine'.*'max_len'"):
        get("cosine", max_len=0)
    with pytest.raises(ValueError, match="'cosine'.*'max_value_correct'"):
        get("cosine", max_value_correct="1")
    custom = get("cosine", max_len=10, min_value_correct=0.0, max_value_correct=2.0, unit="characters")
    assert custom(completions=[r"\boxed{1}"], solution=["1"]) == [pytest.approx(1.0 + math.cos(math.pi * 0.9))]


# --- repetition_penalty ----------------------------------------------------------------------------------


def test_repetition_penalty():
    fn = get("repetition_penalty")
    # "a b c a b c": trigrams abc, bca, cab, abc → 3 unique of 4 → −(1 − 3/4)
    texts = ["a b c a b c", "A b C a B c", "a b", "", "one two three four"]
    assert both(fn, texts) == [-0.25, -0.25, 0.0, 0.0, 0.0]
    assert both(get("repetition_penalty", ngram_size=1, max_penalty=-2.0), ["x x x y"]) == [-1.0]


def test_repetition_penalty_long_and_params():
    value = both(get("repetition_penalty"), ["word " * 10_000])[0]
    assert value == pytest.approx(-(1 - 1 / 9_998))
    with pytest.raises(ValueError, match="'repetition_penalty'.*'max_penalty'"):
        get("repetition_penalty", max_penalty=0.5)
    with pytest.raises(ValueError, match="'repetition_penalty'.*'ngram_size'"):
        get("repetition_penalty", ngram_size=2.5)


# --- soft_overlong ---------------------------------------------------------------------------------------


def test_soft_overlong():
    fn = get("soft_overlong", max_completion_len=10, soft_punish_cache=4)
    ids = [[0] * n for n in (0, 6, 8, 10, 11)]
    # L ≤ 6 → 0; 6 < L ≤ 10 → (6 − L)/4; L > 10 → −1
    assert both(fn, ["x"] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_soft_overlong_errors():
    with pytest.raises(ValueError, match="'soft_overlong'.*completion_ids"):
        get("soft_overlong")(completions=["x"])
    with pytest.raises(ValueError, match="'soft_overlong'.*'soft_punish_cache'"):
        get("soft_overlong", max_completion_len=10, soft_punish_cache=20)
    with pytest.raises(ValueError, match="'soft_overlong'.*'max_completion_len'"):
        get("soft_overlong", max_completion_len="10")
