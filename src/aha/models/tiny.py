"""A tiny character-level Llama that aha builds itself, so that everything runs offline.

The tokenizer is a real ``tokenizers`` BPE model with no merges (one token per character), wrapped
as a transformers ``PreTrainedTokenizerFast`` with a ChatML-style chat template. ``<think>``,
``</think>``, ``<answer>`` and ``</answer>`` are *non-special* added tokens (one id each, kept by
``skip_special_tokens=True``); ``<|im_start|>``, ``<|im_end|>`` (EOS) and ``<|pad|>`` are special.
The model is a randomly initialised ``LlamaForCausalLM`` (not Qwen2: transformers 5 forces its own
tokenizer class on model_type ``qwen2``).
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aha.models.loading import save_model
from aha.settings import check_types, require

REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
SPECIAL_TOKENS = {"pad": "<|pad|>", "unk": "<|unk|>", "bos": "<|im_start|>", "eos": "<|im_end|>"}
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"

# ChatML: <|im_start|>role\ncontent<|im_end|>\n ... ending with "<|im_start|>assistant\n". `tool` messages are
# ChatML turns too. Given `tools`, the prompt starts with a system turn naming them compactly (a character-level
# model pays a token per character: Hermes' ~600-character tool prompt would dwarf the question), each tool as its
# function name and parameter names: "tools: calculator(expression)" (after the text of a system message that
# comes first). An assistant message's `tool_calls` (the OpenAI form) are written after its content in the Hermes
# format the model calls in: <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(tools='') -%}"
    "{%- for tool in (tools or []) -%}"
    "{%- set f = tool.function if tool.function is defined else tool -%}"
    "{%- set ns.args = '' -%}"
    "{%- for p in ((f.parameters or {}).properties or {}) -%}"
    "{%- set ns.args = ns.args + (', ' if ns.args else '') + p -%}"
    "{%- endfor -%}"
    "{%- set ns.tools = ns.tools + (', ' if ns.tools else '') + f.name + '(' + ns.args + ')' -%}"
    "{%- endfor -%}"
    "{%- set rest = messages -%}"
    "{%- if ns.tools -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '\ntools: ' + ns.tools + '<|im_end|>\n' }}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{ '<|im_start|>system\ntools: ' + ns.tools + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- for message in rest -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- for call in (message['tool_calls'] or []) -%}"
    "{%- set c = call.function if call.function is defined else call -%}"
    "{%- set args = c.arguments if c.arguments is string else ((c.arguments or {}) | tojson) -%}"
    "{{ '<tool_call>{\"name\": ' + (c.name | tojson) + ', \"arguments\": ' + args + '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


@dataclass
class TinyConfig:
    """Size of the built-in model. The defaults give ~1.06 M parameters."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # None: as many as attention heads
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        check_types(self)
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ):
            require(self, getattr(self, name) >= 1, name, "must be >= 1")
        require(self, self.num_key_value_heads >= 1, "num_key_value_heads", "must be >= 1")
        require(
            self,
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            "must be divisible by num_attention_heads",
        )
        require(
            self,
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_attention_heads",
            "must be divisible by num_key_value_heads",
        )


def build_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer with chat template, EOS/PAD and non-special reasoning tags."""
    specials = list(SPECIAL_TOKENS.values())
    chars = list(dict.fromkeys(CHARS + extra_chars))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk"]))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(REASONING_TAGS, special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 512
    return tok


def build_model(tokenizer: PreTrainedTokenizerFast, config: TinyConfig | None = None) -> LlamaForCausalLM:
    """Randomly initialised LlamaForCausalLM sized by `config`, vocabulary from `tokenizer`."""
    cfg = config or TinyConfig()
    torch.manual_seed(cfg.seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(llama)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=64,
    )
    return model


def build_tiny(out_dir: str | Path | None = None, config: TinyConfig | None = None, **sizes):
    """Build tokenizer + model; save both (:func:`aha.models.loading.save_model`) when `out_dir` is given.

    Keyword arguments override TinyConfig fields (e.g. ``hidden_size=64``).
    Returns (model, tokenizer).
    """
    cfg = config or TinyConfig()
    if sizes:
        unknown = set(sizes) - set(asdict(cfg))
        if unknown:
            raise ValueError(f"tiny model: unknown size option(s) {sorted(unknown)}; known: {sorted(asdict(cfg))}")
        base = asdict(cfg)
        if "num_attention_heads" in sizes and "num_key_value_heads" not in sizes:
            base.pop("num_key_value_heads")  # follow the new head count
        cfg = TinyConfig(**{**base, **sizes})
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, cfg)
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return model, tokenizer


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
