import pytest

from aha import parse_reasoning


def test_think_then_answer_tags():
    r = parse_reasoning("<think>7+8=15 4+3+1=8</think><answer>85</answer>")
    assert r.thought == "7+8=15 4+3+1=8" and r.answer == "85" and r.format_ok and not r.truncated


def test_think_then_free_text():
    r = parse_reasoning("<think>\nLet me add.\n</think>\n\nThe sum is 85.")
    assert r.thought == "Let me add." and r.answer == "The sum is 85." and r.format_ok


def test_reasoning_style():
    r = parse_reasoning("<reasoning>\n2 and 2\n</reasoning>\n<answer>\n4\n</answer>\n")
    assert r.thought == "2 and 2" and r.answer == "4" and r.format_ok


def test_missing_closing_tag_is_truncated():
    r = parse_reasoning("<think>first 7+8=15 then 4+3")
    assert r.thought == "first 7+8=15 then 4+3" and r.answer == "" and r.truncated and not r.format_ok


def test_unclosed_answer_is_truncated():
    r = parse_reasoning("<think>ok</think><answer>12")
    assert r.answer == "12" and r.truncated and not r.format_ok


def test_prefilled_think():
    r = parse_reasoning("The user wants 2+2.\n</think>\n\n4")
    assert r.prefilled and r.thought == "The user wants 2+2." and r.answer == "4" and r.format_ok


def test_prefilled_think_with_answer_tags():
    r = parse_reasoning("hmm</think><answer>7</answer>")
    assert r.prefilled and r.answer == "7" and r.format_ok


def test_several_think_blocks():
    r = parse_reasoning("<think>a</think>maybe 3<think>b</think> 5")
    assert r.blocks == ("a", "b") and r.thought == "a\n\nb" and r.answer == "5" and not r.format_ok


def test_no_tags():
    r = parse_reasoning("  just 42 \n")
    assert r.thought == "" and r.answer == "just 42" and not r.format_ok and not r.has_thought


def test_empty_thought_is_well_formed():
    r = parse_reasoning("<think>\n\n</think>\n\n42")
    assert r.thought == "" and r.answer == "42" and r.format_ok


@pytest.mark.parametrize(
    "text",
    [
        "hello <think>x</think><answer>1</answer>",  # text before the thought
        "<think>x</think><answer>1</answer> trailing",  # text after the answer
        "<think>x</think><answer>1</answer><answer>2</answer>",  # two answers
        "<think>x</think>",  # no answer
        "<think>x</think><answer> </answer>",  # empty answer
    ],
)
def test_not_well_formed(text):
    assert not parse_reasoning(text).format_ok


def test_last_answer_block_wins():
    assert parse_reasoning("<think>x</think><answer>1</answer><answer>2</answer>").answer == "2"
