"""GGUF both ways on tiny models: write_gguf then convert_gguf gives back the same logits, greedy tokens, tokenizer
and chat template; every bad input is refused with one clear error and leaves nothing behind."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha.models.gguf import (
    SOURCE_FILE,
    GGUFMissingError,
    convert_gguf,
    file_sha256,
    gguf_architecture,
    gguf_metadata,
    pre_tokenizer_name,
    write_gguf,
)
from aha.models.tiny import build_tiny

pytest.importorskip("gguf")

TEXTS = ["hello <think>12+3=15</think> <answer>15</answer>\n", "a  b", "<|im_start|>user\nhi<|im_end|>"]
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<answer>4</answer>"}]


def tiny(tie: bool = True, seed: int = 0):
    """A tiny Llama with grouped-query attention (4 query heads, 2 KV heads), so the q/k permutations differ."""
    return build_tiny(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        seed=seed,
    )


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp")]


def greedy(model, tok, prompt: str) -> list[int]:
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("tie", [True, False])
def test_a_tiny_llama_round_trips_through_gguf(tmp_path, tie) -> None:
    model, tok = tiny(tie)
    path = write_gguf(model, tok, tmp_path / "tiny.gguf")
    assert gguf_architecture(path) == "llama"
    out = convert_gguf(path, tmp_path / "m")
    again, tok2 = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)

    assert again.config.tie_word_embeddings == tie
    assert (again.config.num_attention_heads, again.config.num_key_value_heads) == (4, 2)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name
    x = torch.tensor([tok.encode(TEXTS[0])])
    assert torch.equal(model(x).logits, again(x).logits)
    assert greedy(again, tok2, "12+3") == greedy(model, tok, "12+3")

    for text in TEXTS:
        assert tok2.encode(text) == tok.encode(text)
        assert tok2.decode(tok2.encode(text)) == text
    assert tok2.chat_template == tok.chat_template
    assert tok2.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)
    assert (tok2.eos_token, tok2.pad_token, tok2.bos_token) == (tok.eos_token, tok.pad_token, tok.bos_token)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id
    source = json.loads((out / SOURCE_FILE).read_text())
    assert source == {"gguf": "tiny.gguf", "sha256": file_sha256(path), "architecture": "llama", "dtype": "float32"}


@pytest.mark.parametrize("dtype, torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_files_hold_the_rounded_matrices_and_f32_norms(tmp_path, dtype, torch_dtype) -> None:
    model, tok = tiny()
    out = convert_gguf(write_gguf(model, tok, tmp_path / "t.gguf", dtype=dtype), tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(out)
    for name, weight in model.state_dict().items():
        expected = weight if weight.ndim == 1 else weight.to(torch_dtype).float()
        assert torch.equal(again.state_dict()[name], expected), name


def test_convert_saves_bfloat16_when_asked(tmp_path) -> None:
    model, tok = tiny()
    out = convert_gguf(write_gguf(model, tok, tmp_path / "t.gguf"), tmp_path / "m", dtype="bfloat16")
    again = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    assert json.loads((out / SOURCE_FILE).read_text())["dtype"] == "bfloat16"


def test_a_model_vocabulary_wider_than_the_tokenizer_is_padded(tmp_path) -> None:
    model, tok = tiny()
    model.resize_token_embeddings(len(tok) + 6)
    out = convert_gguf(write_gguf(model, tok, tmp_path / "t.gguf"), tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.config.vocab_size == len(tok) + 6
    x = torch.tensor([tok.encode("1+1")])
    assert torch.equal(model(x).logits, again(x).logits)


def byte_level_tokenizer(digits_one_by_one: bool):
    """A byte-level BPE trained here, with merges that join digits; with `digits_one_by_one` it splits digits
    first (SmolLM2's pre-tokenizer, llama.cpp's ``smollm``), so those merges never apply."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(["In 2024 we had 12 apples and 2024 pears, 1212 in all."] * 50, trainer)
    if digits_one_by_one:
        core.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tok.add_tokens(["<think>"])
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    return tok


@pytest.mark.parametrize("digits_one_by_one, pre", [(False, "gpt-2"), (True, "smollm")])
def test_a_byte_level_bpe_tokenizer_round_trips_with_its_merges_and_pre_tokenizer(
    tmp_path, digits_one_by_one, pre
) -> None:
    tok = byte_level_tokenizer(digits_one_by_one)
    model, _ = tiny()
    model.resize_token_embeddings(len(tok))
    path = write_gguf(model, tok, tmp_path / "t.gguf")
    assert gguf_metadata(path)["tokenizer.ggml.pre"] == pre
    tok2 = AutoTokenizer.from_pretrained(convert_gguf(path, tmp_path / "m"))
    text = "In 2024 we had 12 apples <think> ünïcode"
    assert tok2.tokenize(text) == tok.tokenize(text)
    assert tok2.decode(tok2.encode(text)) == text
    assert ("2" in tok2.tokenize("2024")) == digits_one_by_one  # the digit merges exist; smollm never uses them
    assert tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>hi<|im_end|>"


def test_pre_tokenizer_names() -> None:
    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}, True) == "gpt-2"
    assert pre_tokenizer_name(None, False) == "gpt-2"
    with pytest.raises(ValueError, match="pre-tokenizer"):
        pre_tokenizer_name({"type": "Whitespace"}, False)


def test_a_missing_file_and_a_file_that_is_not_gguf_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_gguf(tmp_path / "none.gguf", tmp_path / "m")
    (tmp_path / "x.gguf").write_text("not a model")
    with pytest.raises(ValueError, match="x.gguf is not a GGUF file"):
        convert_gguf(tmp_path / "x.gguf", tmp_path / "m")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # the header cut short
    with pytest.raises(ValueError, match="damaged"):
        convert_gguf(tmp_path / "cut.gguf", tmp_path / "m")
    assert not (tmp_path / "m").exists() and not leftovers(tmp_path)


def test_an_unsupported_architecture_is_refused_and_leaves_nothing(tmp_path) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(tmp_path / "foo.gguf", "foo")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture 'foo'"):
        convert_gguf(tmp_path / "foo.gguf", tmp_path / "m")
    assert not (tmp_path / "m").exists() and not leftovers(tmp_path)


def test_an_existing_non_empty_output_is_refused_and_untouched(tmp_path) -> None:
    model, tok = tiny()
    path = write_gguf(model, tok, tmp_path / "t.gguf")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        convert_gguf(path, tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["keep.txt"] and not leftovers(tmp_path)
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    assert (convert_gguf(path, tmp_path / "empty") / "config.json").is_file()
    with pytest.raises(ValueError, match="dtype"):
        convert_gguf(path, tmp_path / "other", dtype="float16")


def test_without_the_gguf_package_the_error_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    model, tok = tiny()
    path = write_gguf(model, tok, tmp_path / "t.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(GGUFMissingError, match=r"pip install 'aha\[gguf\]'") as e:
        convert_gguf(path, tmp_path / "m")
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)
    with pytest.raises(GGUFMissingError):
        write_gguf(model, tok, tmp_path / "u.gguf")
    assert not (tmp_path / "m").exists() and not leftovers(tmp_path)


def test_write_gguf_refuses_what_it_cannot_write_faithfully(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tok = tiny()
    with pytest.raises(ValueError, match="dtype"):
        write_gguf(model, tok, tmp_path / "t.gguf", dtype="q4_0")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(tok)))
    with pytest.raises(ValueError, match="Llama-family.*'gpt2'"):
        write_gguf(gpt2, tok, tmp_path / "t.gguf")
    small, _ = tiny()
    small.resize_token_embeddings(len(tok) - 1)
    with pytest.raises(ValueError, match="more than the model's vocab_size"):
        write_gguf(small, tok, tmp_path / "t.gguf")
    scaled, _ = tiny()
    scaled.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="default RoPE"):
        write_gguf(scaled, tok, tmp_path / "t.gguf")
    with pytest.raises(ValueError, match="merge the LoRA adapter"):
        write_gguf(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])), tok, tmp_path / "t.gguf")
    assert not any(tmp_path.iterdir())


def test_a_gguf_file_as_a_model_path_is_converted_once_and_cached_by_content(tmp_path, monkeypatch) -> None:
    import shutil

    import aha.models.gguf as gguf_module
    from aha.models.loading import load_model, resolve_model_path

    monkeypatch.setenv("AHA_MODELS_DIR", str(tmp_path / "cache"))
    model, tok = tiny()
    path = write_gguf(model, tok, tmp_path / "t.gguf")
    first = resolve_model_path(path)
    assert first == str(tmp_path / "cache" / "gguf" / file_sha256(path)[:32])
    loaded, tok2 = load_model(str(path))  # what --model file.gguf does anywhere
    x = torch.tensor([tok.encode("1+2")])
    assert torch.equal(loaded(x).logits, model(x).logits) and tok2.encode("1+2") == tok.encode("1+2")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "convert_gguf", no_conversion)
    shutil.copy(path, tmp_path / "copy.gguf")
    assert resolve_model_path(tmp_path / "copy.gguf") == first  # same contents, same conversion
    monkeypatch.undo()
    monkeypatch.setenv("AHA_MODELS_DIR", str(tmp_path / "cache"))
    other, _ = tiny(seed=1)
    changed = write_gguf(other, tok, tmp_path / "t.gguf")  # new contents under the same name
    assert resolve_model_path(changed) != first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path("some/missing.gguf")  # not taken for a Hub id
    (tmp_path / "bad.gguf").write_text("nope")
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_model_path(tmp_path / "bad.gguf")
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == sorted(
        [first.rsplit("/", 1)[1], file_sha256(changed)[:32]]
    )


def test_q8_0_files_hold_8_bit_blocks_that_transformers_dequantizes(tmp_path) -> None:
    """q8_0: each 32-wide block of a row is int8 codes times one f16 scale; a row that is not whole blocks (here
    none: the tiny model's widths are multiples of 32) would stay f16. Read back close to the weights."""
    import gguf

    model, tok = tiny()
    path = write_gguf(model, tok, tmp_path / "t.gguf", dtype="q8_0")
    assert gguf_metadata(path)["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32
    again = AutoModelForCausalLM.from_pretrained(convert_gguf(path, tmp_path / "m"))
    for name, weight in model.state_dict().items():
        got = again.state_dict()[name]
        step = weight.abs().amax(-1, keepdim=True) / 127 if weight.ndim == 2 else 0  # one code's worth, per row
        assert ((got - weight).abs() <= step + 1e-6).all(), name
        if weight.ndim == 2:
            assert not torch.equal(got, weight), name  # it was really quantised
