"""The course's rewards (length, xmlcount, strict/soft format, int_answer, correctness), hand-worked values."""

from __future__ import annotations

import pytest

from aha.rewards import REGISTRY, get
from aha.rewards.course import count_xml

GOOD = "<reasoning>\n2 + 2 = 4\n</reasoning>\n<answer>\n4\n</answer>\n"
THINK = "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>\n"


def conv(texts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


def both(fn, texts: list[str], **kwargs) -> list:
    """Values on standard completions, asserting conversational ones give the same."""
    standard = fn(completions=texts, **kwargs)
    assert fn(completions=conv(texts), **kwargs) == standard
    return standard


# --- length ----------------------------------------------------------------------------------------------


def test_length_characters():
    fn = get("length")
    assert both(fn, ["a" * 50, "abc", "", "a" * 80]) == [0.0, -47.0, -50.0, -30.0]
    assert both(get("length", ideal_length=5), ["abc"]) == [-2.0]


def test_length_tokens_uses_completion_ids():
    fn = get("length", ideal_length=5, unit="tokens")
    # the text length is irrelevant: 3 tokens and 9 tokens
    assert both(fn, ["a very long text indeed", "x"], completion_ids=[[1, 2, 3], list(range(9))]) == [-2.0, -4.0]


def test_length_tokens_without_ids_is_an_error():
    with pytest.raises(ValueError, match="'length'.*completion_ids"):
        get("length", unit="tokens")(completions=["abc"])


def test_length_bad_unit_is_rejected_at_get():
    with pytest.raises(ValueError, match="'length'.*'unit'"):
        get("length", unit="words")


def test_length_very_long():
    assert both(get("length"), ["x" * 100_000]) == [-(100_000 - 50.0)]


# --- xmlcount --------------------------------------------------------------------------------------------


def test_xmlcount_well_formed():
    assert both(get("xmlcount"), [GOOD]) == [0.5]
    assert both(get("xmlcount", style="think"), [THINK]) == [0.5]
    assert both(get("xmlcount"), [THINK]) == [0.25]  # only the two <answer> tags in reasoning style


def test_xmlcount_trailing_text_penalty():
    # 3 characters after "\n</answer>\n": 0.001·3 for each closing rule, as in the course
    assert both(get("xmlcount"), [GOOD + "xyz"]) == [pytest.approx(0.5 - 0.006)]


def test_xmlcount_no_trailing_newline_is_not_penalised_by_its_length():
    # the course gives 0.5 − 0.001·len(text) + 0.001 here; we give 0.5
    text = GOOD.rstrip("\n")
    assert count_xml(text) == 0.5
    assert count_xml("<reasoning>\n" + "x" * 500 + "\n</reasoning>\n<answer>\n4\n</answer>") == 0.5


def test_xmlcount_partial_and_duplicated_tags():
    assert both(get("xmlcount"), ["", "4", "<answer>\n4\n</answer>"]) == [0.0, 0.0, 0.125]
    assert both(get("xmlcount"), ["\n<answer>\n4\n</answer>\n"]) == [0.25]
    twice = "<reasoning>\na\n</reasoning>\n<reasoning>\nb\n</reasoning>\n<answer>\n4\n</answer>\n"
    assert both(get("xmlcount"), [twice]) == [0.25]


def test_xmlcount_prefilled_think():
    completion = "2 + 2 = 4\n</think>\n<answer>\n4\n</answer>\n"  # the template wrote "<think>\n"
    assert both(get("xmlcount", style="think"), [completion]) == [0.375]
    assert both(get("xmlcount", style="think", prefill="<think>\n"), [completion]) == [0.5]


# --- strict and soft format ------------------------------------------------------------------------------


def test_strict_format():
    fn = get("strict_format")
    multi = "<reasoning>\nline 1\nline 2\n</reasoning>\n<answer>\n4\n</answer>\n"  # the course's regex misses it
    values = both(fn, [GOOD, multi, GOOD.rstrip("\n"), "<reasoning>2+2</reasoning><answer>4</answer>", "", THINK])
    assert values == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert both(get("strict_format", style="think", value=2.0), [THINK, GOOD]) == [2.0, 0.0]


def test_soft_format():
    fn = get("soft_format")
    texts = [
        GOOD,
        "<reasoning>a\nb</reasoning> <answer>4</answer> and more",
        "Sure! <reasoning>a</reasoning><answer>4</answer>",
        "<reasoning>a</reasoning>",
        "",
    ]
    assert both(fn, texts) == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert both(get("soft_format", style="think", value=1), [THINK, GOOD]) == [1.0, 0.0]


def test_format_rewards_with_prefilled_think():
    completion = "2 + 2 = 4\n</think>\n<answer>\n4\n</answer>\n"
    for name in ("strict_format", "soft_format"):
        assert both(get(name, style="think"), [completion]) == [0.0]
        assert both(get(name, style="think", prefill="<think>\n"), [completion]) == [0.5]
    # the model re-opening <think> after the prefill is not the strict format
    again = "<think>\n" + completion
    assert both(get("strict_format", style="think", prefill="<think>\n"), [again]) == [0.0]


def test_style_is_validated():
    for name in ("xmlcount", "strict_format", "soft_format", "format"):
        with pytest.raises(ValueError, match=f"'{name}'.*'style'"):
            get(name, style="xml")


# --- int_answer and correctness --------------------------------------------------------------------------


def test_int_answer():
    texts = [
        "<answer>42</answer>",
        "<answer> -3 </answer>",
        "<answer>4.5</answer>",
        "42",
        "<answer>²</answer>",
        "",
        GOOD,
    ]
    assert both(get("int_answer"), texts) == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert both(get("int_answer", value=1.0), ["<answer>7</answer>"]) == [1.0]


def test_correctness():
    fn = get("correctness")
    texts = [GOOD, THINK, "<answer> 5 </answer>", "4", "", "<answer>1</answer> <answer>4</answer>"]
    assert both(fn, texts, answer=["4", "4", "4", "4", "4", "4"]) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert both(get("correctness", value=2.0), [GOOD], answer=[4]) == [2.0]  # the course's value is 2.0


def test_correctness_missing_answer_is_none():
    assert both(get("correctness"), [GOOD, GOOD], answer=[None, "4"]) == [None, 1.0]


def test_course_rewards_ignore_trainer_kwargs():
    kwargs = {"prompts": ["q"], "completion_ids": [[1, 2]], "answer": ["4"], "trainer_state": None, "extra": [1]}
    for name in ("length", "xmlcount", "strict_format", "soft_format", "int_answer", "correctness"):
        assert len(get(name)(completions=[GOOD], **kwargs)) == 1, name


@pytest.mark.parametrize(
    "name,param,bad",
    [
        ("length", "ideal_length", "50"),
        ("length", "unit", 1),
        ("xmlcount", "style", 3),
        ("strict_format", "value", "0.5"),
        ("soft_format", "prefill", 0),
        ("int_answer", "value", True),
        ("correctness", "value", "1"),
    ],
)
def test_wrong_parameter_types(name, param, bad):
    with pytest.raises(ValueError, match=f"reward '{name}'.*'{param}'"):
        get(name, **{param: bad})


def test_registered():
    for name in ("length", "xmlcount", "strict_format", "soft_format", "int_answer", "correctness", "format"):
        assert name in REGISTRY
        assert get(name).__name__ == name
