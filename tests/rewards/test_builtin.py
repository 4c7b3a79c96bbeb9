"""The built-in rewards as a user gets them: ``aha.rewards.get(name, **params)`` called the way TRL calls them."""

import pytest

import aha.rewards as rewards


def conv(text):
    return [{"role": "assistant", "content": text}]


FORMAT_CASES = [
    ("<think>7+8=15</think><answer>15</answer>", 1.0),
    ("<think>\nsome thought\n</think>\n<answer>\n15\n</answer>\n", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<think>a</think>   <answer>b</answer>   ", 1.0),
    ("<think>a\n\nb</think><answer>1</answer>", 1.0),
    ("Sure! <think>a</think><answer>1</answer>", 0.0),  # text before the thought
    ("<think>a</think><answer>1</answer> done", 0.0),  # text after the answer
    ("<think>a</think>", 0.0),  # no answer
    ("<answer>1</answer>", 0.0),  # no thought
    ("<answer>1</answer><think>a</think>", 0.0),  # wrong order
    ("<think>a</think>b<answer>1</answer>", 0.0),  # text between the blocks
    ("<think>a<answer>1</answer>", 0.0),  # unclosed thought
    ("<reasoning>a</reasoning><answer>1</answer>", 0.0),  # other style
    ("", 0.0),
]


@pytest.mark.parametrize("text, expected", FORMAT_CASES)
def test_format_standard_and_conversational(text, expected):
    fmt = rewards.get("format")
    assert fmt(completions=[text]) == [expected]
    assert fmt(prompts=[[{"role": "user", "content": "q"}]], completions=[conv(text)]) == [expected]


def test_format_batch_keeps_order_and_ignores_dataset_columns():
    fmt = rewards.get("format")
    texts = [t for t, _ in FORMAT_CASES]
    out = fmt(
        prompts=["q"] * len(texts), completions=texts, answer=["1"] * len(texts), completion_ids=[[1]] * len(texts)
    )
    assert out == [e for _, e in FORMAT_CASES]
    assert all(isinstance(x, float) for x in out)


def test_format_reasoning_style_and_prefill():
    reasoning = rewards.get("format", style="reasoning")
    assert reasoning(completions=["<reasoning>a</reasoning><answer>1</answer>"]) == [1.0]
    assert reasoning(completions=["<think>a</think><answer>1</answer>"]) == [0.0]
    # a chat template that prefills "<think>\n": the completion starts inside the thought
    prefilled = rewards.get("format", prefill="<think>\n")
    assert prefilled(completions=["a</think><answer>1</answer>", conv("a</think><answer>1</answer>")]) == [1.0, 1.0]
    assert rewards.get("format")(completions=["a</think><answer>1</answer>"]) == [0.0]


def test_correctness_standard_and_conversational():
    correct = rewards.get("correctness")
    completions = [
        "<think>7+8=15 4+3+1=8</think><answer>85</answer>",  # right
        "<think>7+8=15 4+3=7</think><answer>75</answer>",  # wrong
        "<answer> 85 </answer>",  # right, surrounding spaces ignored
        "85",  # no answer block
        "<answer>84</answer> wait <answer>85</answer>",  # the last block counts
        "<answer>85</answer> wait <answer>84</answer>",
        "<answer>8 5</answer>",
    ]
    expected = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    answers = ["85"] * len(completions)
    assert correct(prompts=["47+38"] * len(completions), completions=completions, answer=answers) == expected
    assert correct(completions=[conv(c) for c in completions], answer=answers) == expected


def test_correctness_per_row_answers_and_missing_answer():
    correct = rewards.get("correctness")
    out = correct(
        completions=["<answer>3</answer>", "<answer>3</answer>", "<answer>4</answer>", conv("<answer>12</answer>")],
        answer=["3", "4", None, 12],
    )
    assert out == [1.0, 0.0, None, 1.0]


def test_correctness_value_scales():
    completions = ["<answer>85</answer>", "<answer>84</answer>"]
    assert rewards.get("correctness", value=2.0)(completions=completions, answer=["85", "85"]) == [2.0, 0.0]
    assert rewards.get("correctness", value=0.5)(completions=completions, answer=["85", "85"]) == [0.5, 0.0]
    assert rewards.get("correctness", value=3)(completions=completions, answer=["85", "85"]) == [3, 0.0]


def test_name_is_the_registered_name():
    assert rewards.get("format").__name__ == "format"
    assert rewards.get("correctness").__name__ == "correctness"
    assert rewards.get("correctness", value=2.0).__name__ == "correctness"
    assert {"format", "correctness"} <= set(rewards.names())


def test_params_are_bound_per_call_to_get():
    two = rewards.get("correctness", value=2.0)
    one = rewards.get("correctness")
    assert two(completions=["<answer>1</answer>"], answer=["1"]) == [2.0]
    assert one(completions=["<answer>1</answer>"], answer=["1"]) == [1.0]


def test_unknown_reward_suggests_a_name():
    with pytest.raises(ValueError, match=r"'correctnes'.*did you mean.*correctness"):
        rewards.get("correctnes")
    with pytest.raises(ValueError, match=r"'formatt'.*did you mean.*format"):
        rewards.get("formatt")


@pytest.mark.parametrize(
    "name, params, param",
    [
        ("format", {"stlye": "think"}, "stlye"),
        ("correctness", {"valeu": 2.0}, "valeu"),
        ("correctness", {"style": "think"}, "style"),
    ],
)
def test_unknown_parameter_names_reward_and_parameter(name, params, param):
    with pytest.raises(ValueError) as err:
        rewards.get(name, **params)
    assert repr(name) in str(err.value) and repr(param) in str(err.value)


@pytest.mark.parametrize(
    "name, params, param",
    [
        ("correctness", {"value": "high"}, "value"),
        ("correctness", {"value": True}, "value"),
        ("correctness", {"value": [1.0]}, "value"),
        ("format", {"style": 1}, "style"),
        ("format", {"style": "xml"}, "style"),  # right type, not one of the styles
        ("format", {"prefill": 0}, "prefill"),
    ],
)
def test_bad_parameter_value_names_reward_and_parameter(name, params, param):
    with pytest.raises(ValueError) as err:
        rewards.get(name, **params)
    assert repr(name) in str(err.value) and repr(param) in str(err.value)


def test_correctness_reads_the_formats_people_use():
    correct = rewards.get("correctness")
    completions = [
        "Natalia sold 48+24 = 72 clips.\n#### 72",  # GSM8K's ending, no tags
        "So the total is $\\boxed{72}$.",
        "48 + 24 = 72. The answer is 72.",
        "Answer: 72",
        "\\boxed{72} <answer>73</answer>",  # the <answer> block wins
        "48 + 24 = 72",  # no stated answer: the last number of the reasoning does not count
        "#### 72\nbut then 5 more",  # #### mid-text is not the final answer
        "<think>it is 72",  # cut off in the thought
    ]
    expected = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert correct(completions=completions, answer=["72"] * len(completions)) == expected
    assert correct(completions=[conv(c) for c in completions], answer=["72"] * len(completions)) == expected


def test_correctness_tag_format_is_strict_and_format_is_a_separate_reward():
    strict = rewards.get("correctness", answer_format="tag")
    texts = ["#### 72", "\\boxed{72}", "The answer is 72.", "<answer>72</answer>"]
    assert strict(completions=texts, answer=["72"] * 4) == [0.0, 0.0, 0.0, 1.0]
    # correctness no longer needs the tags; the strict <think>…</think><answer>…</answer> layout is format's
    assert rewards.get("correctness")(completions=texts, answer=["72"] * 4) == [1.0] * 4
    assert rewards.get("format")(completions=texts) == [0.0] * 4
    with pytest.raises(ValueError, match="reward 'correctness': parameter 'answer_format' must be one of"):
        rewards.get("correctness", answer_format="boxed")
