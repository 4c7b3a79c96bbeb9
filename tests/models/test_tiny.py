"""The built-in tiny model: what `build_tiny` saves must reload with the Auto classes and behave the same."""

import string
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import get_json_schema

from aha.models.tiny import REASONING_TAGS, build_tiny, build_tokenizer, num_parameters
from aha.tools.calls import format_call, render_tool_prompt, renders_tools, tool_suffix_ids
from aha.tools.toolbox import ToolCall

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)

ROUND_TRIP = [
    string.digits,
    string.ascii_letters,
    string.punctuation,
    "  two  spaces, a tab-free line\nand a second line\n\n",
    "<think>7+8=15 4+3+1=8</think><answer>85</answer>",
    "<think>\nlet me see: 12 * 3 = 36.\n</think>\n<answer> 36 </answer>\n",
    "a<think>b</think>c<answer>d</answer>e",
    "",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Build the default tiny model, save it, and reload both halves with the Auto classes."""
    out = tmp_path_factory.mktemp("tiny")
    model, tokenizer = build_tiny(out)
    return model, tokenizer, AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out), out


def test_saves_with_save_pretrained(saved):
    *_, out = saved
    names = {p.name for p in out.iterdir()}
    assert "config.json" in names
    assert "tokenizer.json" in names
    assert any(n.endswith(".safetensors") for n in names)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_text_round_trips_exactly(saved, text):
    _, original, _, reloaded = saved[:4]
    for tok in (original, reloaded):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_one_token_per_character(saved):
    tok = saved[3]
    text = string.digits + string.ascii_letters + string.punctuation + " \n"
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == len(text)
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


def test_reasoning_tags_are_single_non_special_tokens(saved):
    tok = saved[3]
    special = set(tok.all_special_ids)
    tag_ids = []
    for tag in REASONING_TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{tag} is split into {ids}"
        assert ids[0] != tok.unk_token_id
        assert ids[0] not in special, f"{tag} must not be special"
        tag_ids.append(ids[0])
    assert len(set(tag_ids)) == 4
    # inside text they are still one token each (not spelled out character by character)
    ids = tok("x<think>y</think><answer>z</answer>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 + 4
    assert tok.decode(tag_ids, skip_special_tokens=True) == "".join(REASONING_TAGS)


def test_eos_and_pad(saved):
    model, _, reloaded_model, tok, _ = saved
    assert tok.eos_token is not None and tok.pad_token is not None
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.eos_token_id not in tok(string.printable, add_special_tokens=False)["input_ids"]
    # both are special: dropped by skip_special_tokens
    ids = tok("ab", add_special_tokens=False)["input_ids"]
    assert tok.decode([tok.pad_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == "ab"
    for m in (model, reloaded_model):
        assert m.generation_config.eos_token_id in (tok.eos_token_id, [tok.eos_token_id])
        assert m.generation_config.pad_token_id == tok.pad_token_id
        assert m.config.vocab_size == len(tok)


def test_chat_template(saved):
    tok = saved[3]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 47+38?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Be brief." in prompt and "What is 47+38?" in prompt
    assert prompt.index("system") < prompt.index("Be brief.") < prompt.index("user") < prompt.index("What is")
    assert prompt.endswith("<|im_start|>assistant\n")
    no_gen = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not no_gen.rstrip().endswith("assistant")
    assert prompt.startswith(no_gen)
    # the rendered prompt encodes and decodes back to itself
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == prompt
    header = len("assistant\n")
    assert ids[-header - 1] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids[-header:]) == "assistant\n"
    assert tok.eos_token_id in ids  # each message ends with EOS (<|im_end|>)


def test_reloaded_model_gives_same_logits(saved):
    model, tok, reloaded, *_ = saved
    ids = torch.tensor([tok("<think>12+34</think><answer>46</answer>", add_special_tokens=False)["input_ids"]])
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        a, b = model(ids).logits, reloaded(ids).logits
    assert a.shape == (1, ids.size(1), len(tok))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a.std() > 0


def test_default_parameter_count(saved):
    assert 1_000_000 <= num_parameters(saved[0]) <= 3_000_000


def test_sizes_override():
    model, tok = build_tiny(**SMALL)
    cfg = model.config
    assert cfg.hidden_size == 32
    assert cfg.intermediate_size == 64
    assert cfg.num_hidden_layers == 1
    assert cfg.num_attention_heads == 2
    assert cfg.num_key_value_heads == 2  # follows the new head count
    assert len(model.model.layers) == 1
    assert num_parameters(model) < 100_000


def test_same_seed_same_weights_other_seed_other_weights():
    a, _ = build_tiny(**SMALL, seed=0)
    b, _ = build_tiny(**SMALL, seed=0)
    c, _ = build_tiny(**SMALL, seed=1)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_unknown_size_option_is_rejected():
    with pytest.raises(ValueError, match="hidden_sise"):
        build_tiny(hidden_sise=64)


@pytest.mark.parametrize(
    "sizes, field",
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    ],
)
def test_bad_sizes_name_the_field(sizes, field):
    with pytest.raises(ValueError, match=field):
        build_tiny(**sizes)


@pytest.mark.parametrize("kv_heads", [0, -2])
def test_bad_kv_heads_name_the_field(kv_heads):
    with pytest.raises(ValueError, match="num_key_value_heads"):
        build_tiny(num_attention_heads=4, num_key_value_heads=kv_heads)


# ------------------------------------------------------------------------------------------ tools in the template
@dataclass
class Result:  # what aha.tools.calls reads of a tool result
    name: str
    content: str


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: the expression, e.g. 347*862
    """
    return expression


def lookup(word: str, limit: int = 3) -> str:
    """Look a word up.

    Args:
        word: the word
        limit: how many senses
    """
    return word


QUESTION = [{"role": "user", "content": "347*862"}]
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "347*862"}}</tool_call>'


def test_without_tools_the_template_is_plain_chatml():
    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "47+38"},
        {"role": "assistant", "content": "<answer>85</answer>"},
    ]
    chatml = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    for tools in ({}, {"tools": None}, {"tools": []}):
        assert tok.apply_chat_template(messages, tokenize=False, **tools) == chatml
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **tools) == (
            chatml + "<|im_start|>assistant\n"
        )


def test_tools_are_named_compactly_in_a_first_system_turn():
    tok = build_tokenizer()
    got = tok.apply_chat_template(QUESTION, tools=[calculator], tokenize=False, add_generation_prompt=True)
    assert got == (
        "<|im_start|>system\ntools: calculator(expression)<|im_end|>\n"
        "<|im_start|>user\n347*862<|im_end|>\n<|im_start|>assistant\n"
    )
    # JSON schemas render the same as the functions; each tool with all its parameters, in order
    schemas = [get_json_schema(calculator), get_json_schema(lookup)]
    got = tok.apply_chat_template(QUESTION, tools=schemas, tokenize=False)
    assert got.startswith("<|im_start|>system\ntools: calculator(expression), lookup(word, limit)<|im_end|>\n")
    # a system message of the conversation's own comes first, the tools after it in the same turn
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    got = tok.apply_chat_template(messages, tools=[calculator], tokenize=False)
    assert got == (
        "<|im_start|>system\nBe brief.\ntools: calculator(expression)<|im_end|>\n<|im_start|>user\n347*862<|im_end|>\n"
    )


def test_tool_messages_and_tool_calls_render_as_chatml_turns():
    tok = build_tokenizer()
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "347*862"}}}
    messages = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "calculator", "content": "299114"},
        {"role": "assistant", "content": "<answer>299114</answer>"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        f"<|im_start|>user\n347*862<|im_end|>\n<|im_start|>assistant\n{CALL}<|im_end|>\n"
        "<|im_start|>tool\n299114<|im_end|>\n<|im_start|>assistant\n<answer>299114</answer><|im_end|>\n"
    )
    # the call is written as the model writes it (aha.tools.calls.format_call), arguments given as JSON text too
    assert CALL == format_call(ToolCall("calculator", {"expression": "347*862"}), "hermes")
    as_text = {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "347*862"}'}}
    text = tok.apply_chat_template(
        [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [as_text]}], tokenize=False
    )
    assert text.endswith(f"<|im_start|>assistant\n{CALL}<|im_end|>\n")


def test_the_rollout_layout_is_the_templates_conversation():
    """prompt (with the tools) + the assistant's turn + EOS + tool_suffix_ids == the template's rendering of the
    whole conversation up to the next assistant header: what the GRPO rollout and SFT build is what the template
    gives."""
    tok = build_tokenizer()
    assert renders_tools(tok)
    schemas = [get_json_schema(calculator)]
    prompt = tok(render_tool_prompt(tok, QUESTION, schemas), add_special_tokens=False)["input_ids"]
    turn = tok(CALL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    suffix = tool_suffix_ids(tok, [Result("calculator", "299114")])
    assert tok.decode(suffix) == "\n<|im_start|>tool\n299114<|im_end|>\n<|im_start|>assistant\n"
    whole = [*QUESTION, {"role": "assistant", "content": CALL}, {"role": "tool", "content": "299114"}]
    expected = tok.apply_chat_template(whole, tools=schemas, tokenize=False, add_generation_prompt=True)
    assert prompt + turn + suffix == tok(expected, add_special_tokens=False)["input_ids"]
    two = tool_suffix_ids(tok, [Result("calculator", "6"), Result("calculator", "-5")])
    assert tok.decode(two) == "\n<|im_start|>tool\n6<|im_end|>\n<|im_start|>tool\n-5<|im_end|>\n<|im_start|>assistant\n"
