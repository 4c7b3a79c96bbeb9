"""Tool-call formats: parsing Hermes (Qwen/ChatML) and Llama 3 calls, finding the format and rendering tools and
results with real chat templates (Qwen 2.5's and Llama 3.1's, as TRL ships them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aha.models.tiny import build_tokenizer
from aha.tools.calls import (
    detect_format,
    format_call,
    parse_turn,
    render_tool_prompt,
    renders_tools,
    tool_suffix_ids,
    tool_system_prompt,
)
from aha.tools.toolbox import ToolCall, ToolResult, tool_schema


def calc(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: the expression, e.g. "2+3"
    """
    return expression


def template(name: str) -> str:
    trl = pytest.importorskip("trl")
    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not path.exists():
        pytest.skip(f"TRL ships no {name} template")
    return path.read_text()


def qwen_tokenizer():
    tok = build_tokenizer()
    tok.chat_template = template("qwen2_5")
    return tok


def llama_tokenizer():
    tok = build_tokenizer()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = template("llama3_1")
    return tok


# ------------------------------------------------------------------------------------------------ parsing
def test_hermes_calls_anywhere_in_the_turn():
    text = (
        "I will compute it. <tool_call>\n"
        '{"name": "calc", "arguments": {"expression": "2+3"}}\n</tool_call>'
        '<tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"4*5\\"}"}</tool_call>'
    )
    turn = parse_turn(text, "hermes")
    assert turn.calls == [ToolCall("calc", {"expression": "2+3"}), ToolCall("calc", {"expression": "4*5"})]
    assert turn.content == "I will compute it." and turn.errors == []
    assert turn.message()["tool_calls"][1] == {
        "type": "function",
        "function": {"name": "calc", "arguments": {"expression": "4*5"}},
    }
    assert parse_turn("<think>no tools</think><answer>5</answer>", "hermes").calls == []
    assert "tool_calls" not in parse_turn("<answer>5</answer>", "hermes").message()


def test_malformed_hermes_calls_are_errors_not_silence():
    bad = parse_turn('<tool_call>{"name": "calc", "arguments": {</tool_call>', "hermes")
    assert bad.calls == [] and "not valid JSON" in bad.errors[0]
    assert 'must be a JSON object with a "name"' in parse_turn("<tool_call>[1, 2]</tool_call>", "hermes").errors[0]
    got = parse_turn('<tool_call>{"name": "calc", "arguments": [1]}</tool_call>', "hermes")
    assert "must be a JSON object" in got.errors[0]
    assert parse_turn('<tool_call>{"name": "calc"', "hermes").calls == []  # unclosed (cut): nothing to run


def test_llama3_json_calls():
    turn = parse_turn('<|python_tag|>{"name": "calc", "parameters": {"expression": "2+3"}}', "llama3")
    assert turn.calls == [ToolCall("calc", {"expression": "2+3"})]
    two = parse_turn('{"name": "a", "parameters": {"x": "1;2"}}; {"name": "b", "parameters": {}}', "llama3")
    assert two.calls == [ToolCall("a", {"x": "1;2"}), ToolCall("b", {})]
    plain = parse_turn("The answer is 5.", "llama3")
    assert plain.calls == [] and plain.content == "The answer is 5."
    assert parse_turn('{"name": "calc", "parameters": ', "llama3").errors


def test_format_call_round_trips():
    call = ToolCall("calc", {"expression": "12*(3+4)"})
    for fmt in ("hermes", "llama3"):
        assert parse_turn(format_call(call, fmt), fmt).calls == [call]
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'"):
        parse_turn("x", "xml")


# ------------------------------------------------------------------------------------------------ templates
def test_formats_detected_from_real_templates():
    assert detect_format(qwen_tokenizer()) == "hermes"
    assert detect_format(llama_tokenizer()) == "llama3"
    plain = build_tokenizer()
    plain.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    assert detect_format(plain) == "hermes" and not renders_tools(plain)
    assert renders_tools(qwen_tokenizer()) and renders_tools(llama_tokenizer())


def test_prompt_has_the_tools_by_the_template_or_by_aha():
    schema = tool_schema(calc)
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    qwen = render_tool_prompt(qwen_tokenizer(), msgs, [schema])
    assert "<tools>" in qwen and json.dumps(schema) in qwen and qwen.endswith("<|im_start|>assistant\n")
    plain = build_tokenizer()
    plain.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text = render_tool_prompt(plain, msgs, [schema])
    assert text.startswith("<|im_start|>system\n" + tool_system_prompt([schema]))
    with_system = render_tool_prompt(plain, [{"role": "system", "content": "Be brief."}, *msgs], [schema])
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\nYou may call") and with_system.count("system") == 1
    assert render_tool_prompt(plain, msgs, []) == plain.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize("make", [qwen_tokenizer, llama_tokenizer], ids=["qwen2.5", "llama3.1"])
def test_suffix_is_what_the_template_gives_the_whole_conversation(make):
    """prompt + the model's turn (+ EOS) + suffix == the template's rendering of the conversation with the tool
    message, up to the next assistant header: appending tokens is exact."""
    tok = make()
    fmt = detect_format(tok)
    call = ToolCall("calc", {"expression": "2+3"})
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    prompt = tok.apply_chat_template(msgs, tools=[calc], tokenize=True, add_generation_prompt=True, return_dict=False)
    turn = tok(format_call(call, fmt), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    suffix = tool_suffix_ids(tok, [ToolResult("calc", "5", False)])
    whole = msgs + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": call.arguments}}],
        },
        {"role": "tool", "name": "calc", "content": "5"},
    ]
    expected = tok.apply_chat_template(
        whole, tools=[calc], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    got = tok.decode(list(prompt) + turn + suffix)
    # the templates render the call's JSON with their own spacing; the glue and the result are identical
    assert tok.decode(suffix) == tok.decode(expected)[len(tok.decode(expected)) - len(tok.decode(suffix)) :]
    assert "5" in tok.decode(suffix) and got.startswith(tok.decode(prompt))
    if fmt == "hermes":
        assert (
            tok.decode(suffix)
            == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        )
    else:
        assert (
            tok.decode(suffix)
            == '<|start_header_id|>ipython<|end_header_id|>\n\n"5"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
        )


def test_suffix_needs_results_and_a_prefix_preserving_template():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="no tool results"):
        tool_suffix_ids(tok, [])
    # a template whose start depends on the whole conversation: earlier turns change when messages follow
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(ValueError, match="renders an assistant turn differently"):
        tool_suffix_ids(tok, [ToolResult("calc", "5", False)])
