"""The built-in tiny model: what `build_tiny` saves must reload with the Auto classes and behave the same."""

import string

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha.models.tiny import REASONING_TAGS, build_tiny, num_parameters

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
