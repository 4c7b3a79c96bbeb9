"""SFT on tool-calling traces: the token layout of the GRPO tool rollout, loss only on the assistant's turns."""

import pytest
import torch

from aha.models.tiny import build_tokenizer
from aha.tasks import get_task
from aha.train.sft import SFTConfig, SFTTrainer, collate, tokenize_sft_row, tool_schemas


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: the expression, e.g. 347*862
    """
    return expression


CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "347*862"}}</tool_call>'
PROMPT = [{"role": "user", "content": "347*862"}]
TRACE = [
    {"role": "assistant", "content": CALL},
    {"role": "tool", "name": "calculator", "content": "299114"},
    {"role": "assistant", "content": "<answer>299114</answer>"},
]
HEADER = "<|im_start|>system\ntools: calculator(expression)<|im_end|>\n"
QUESTION = "<|im_start|>user\n347*862<|im_end|>\n<|im_start|>assistant\n"
TOOL_GLUE = "\n<|im_start|>tool\n299114<|im_end|>\n<|im_start|>assistant\n"


def spans(labels: list[int], labelled: bool) -> list[tuple[int, int]]:
    """The maximal runs [start, end) of positions that carry a label (`labelled`) or are -100."""
    out, start = [], None
    for i, x in enumerate([*labels, None]):
        inside = x is not None and (x != -100) == labelled
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            out.append((start, i))
            start = None
    return out


def test_two_turn_trace_labels_exactly_the_assistant_turns():
    tok = build_tokenizer()
    ids, labels = tokenize_sft_row(tok, {"prompt": PROMPT, "completion": TRACE}, 512, tool_schemas([calculator]))
    assert len(ids) == len(labels)
    trained = [tok.decode(ids[a:b]) for a, b in spans(labels, True)]
    assert trained == [CALL + "<|im_end|>", "<answer>299114</answer><|im_end|>"]  # each turn's content + EOS
    masked = [tok.decode(ids[a:b]) for a, b in spans(labels, False)]
    assert masked == [HEADER + QUESTION, TOOL_GLUE]  # the prompt with its tools; the template's glue + the result
    assert all(y == x for x, y in zip(ids, labels) if y != -100)
    # the whole row is the template's conversation (minus the newline after the final EOS)
    whole = tok.apply_chat_template([*PROMPT, *TRACE], tools=[calculator], tokenize=False)
    assert tok.decode(ids) + "\n" == whole


def test_without_tools_the_prompt_has_no_tools_and_tool_turns_stay_masked():
    tok = build_tokenizer()
    ids, labels = tokenize_sft_row(tok, {"prompt": PROMPT, "completion": TRACE}, 512)
    assert [tok.decode(ids[a:b]) for a, b in spans(labels, False)] == [QUESTION, TOOL_GLUE]
    assert [tok.decode(ids[a:b]) for a, b in spans(labels, True)] == [
        CALL + "<|im_end|>",
        "<answer>299114</answer><|im_end|>",
    ]


def test_single_message_completions_are_tokenised_as_before():
    tok = build_tokenizer()
    row = {"prompt": PROMPT, "completion": [{"role": "assistant", "content": "<answer>298111</answer>"}]}
    ids, labels = tokenize_sft_row(tok, row, 512)
    prompt = tok(QUESTION, add_special_tokens=False)["input_ids"]
    answer = tok("<answer>298111</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == prompt + answer and labels == [-100] * len(prompt) + answer
    with_tools = tokenize_sft_row(tok, row, 512, tool_schemas([calculator]))
    assert tok.decode(with_tools[0]).startswith(HEADER + QUESTION) and with_tools[1][-len(answer) :] == answer


def test_several_tool_results_and_truncation():
    tok = build_tokenizer()
    trace = [
        {"role": "assistant", "content": "<tool_call>a</tool_call><tool_call>b</tool_call>"},
        {"role": "tool", "name": "calculator", "content": "6"},
        {"role": "tool", "name": "calculator", "content": "-5"},
        {"role": "assistant", "content": "<answer>1</answer>"},
    ]
    ids, labels = tokenize_sft_row(tok, {"prompt": PROMPT, "completion": trace}, 512)
    masked = [tok.decode(ids[a:b]) for a, b in spans(labels, False)]
    assert masked[1] == "\n<|im_start|>tool\n6<|im_end|>\n<|im_start|>tool\n-5<|im_end|>\n<|im_start|>assistant\n"
    short, short_labels = tokenize_sft_row(tok, {"prompt": PROMPT, "completion": trace}, 40)
    assert short == ids[:40] and short_labels == labels[:40]


@pytest.mark.parametrize(
    "completion, culprit",
    [
        ([{"role": "tool", "content": "1"}, {"role": "assistant", "content": "x"}], "message 0 is a tool message"),
        ([{"role": "assistant", "content": "x"}, {"role": "tool", "content": "1"}], "ends with the assistant's turn"),
        ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "message 1: a multi-turn"),
        ([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}], "two assistant messages"),
    ],
)
def test_malformed_traces_name_the_row_and_message(small_tiny, tmp_path, completion, culprit):
    model, tok = small_tiny
    rows = [{"prompt": PROMPT, "completion": TRACE}, {"prompt": PROMPT, "completion": completion}]
    with pytest.raises(ValueError, match=f"SFT row 1: .*{culprit}"):
        SFTTrainer(model, SFTConfig(output_dir=str(tmp_path)), rows, tok)


def test_tools_need_a_schema_and_chat_prompts(small_tiny, tmp_path):
    model, tok = small_tiny

    def bare(x):
        return x

    rows = [{"prompt": PROMPT, "completion": TRACE}]
    with pytest.raises(ValueError, match="tool 'bare' has no JSON schema .*docstring"):
        SFTTrainer(model, SFTConfig(output_dir=str(tmp_path)), rows, tok, tools=[bare])
    with pytest.raises(ValueError, match="each tool must be a function"):
        SFTTrainer(model, SFTConfig(output_dir=str(tmp_path)), rows, tok, tools=["calculator"])
    text_rows = [{"prompt": "347*862=", "completion": "x"}]
    with pytest.raises(ValueError, match="SFT row 0: SFT with tools needs conversational prompts"):
        SFTTrainer(model, SFTConfig(output_dir=str(tmp_path)), text_rows, tok, tools=[calculator])


def test_trainer_renders_the_tools_and_learns_the_calls(small_tiny, tmp_path):
    """The trainer's examples carry the tools' schemas; a short SFT on the calculator task lowers the loss on its
    traces, and the loss counts only the assistant's tokens (changing a tool result's digits changes nothing)."""
    model, tok = small_tiny
    rows = get_task("calculator", digits=2, call_fraction=0.5).rows("sft", 256, seed=0)
    cfg = SFTConfig(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=32, learning_rate=3e-3, logging_steps=10
    )
    trainer = SFTTrainer(model, cfg, rows, tok, tools=[calculator])
    assert trainer.examples[0] == tokenize_sft_row(tok, rows[0], cfg.max_length, tool_schemas([calculator]))
    assert tok.decode(trainer.examples[0][0]).startswith(HEADER)
    batch = collate(trainer.examples[:32], tok.pad_token_id)
    called = next(r for r in rows if len(r["completion"]) == 3)
    other = {
        **called,
        "completion": [called["completion"][0], {"role": "tool", "content": "77777"}, called["completion"][2]],
    }
    a, b = (collate([tokenize_sft_row(tok, r, 512)], tok.pad_token_id) for r in (called, other))
    with torch.no_grad():
        before = model(**batch).loss.item()
        la, lb = model(**a).loss.item(), model(**b).loss.item()
    assert la != lb  # the tool result is context: it changes the logits after it ...
    assert (a["labels"] != -100).sum() == (b["labels"] != -100).sum()  # ... but is never a target
    assert [x for x in a["labels"][0].tolist() if x != -100] == [x for x in b["labels"][0].tolist() if x != -100]
    trainer.train()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before * 0.75, (before, after)
