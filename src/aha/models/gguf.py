"""GGUF files (llama.cpp's format) and model directories, both ways.

:func:`convert_gguf` turns a GGUF file into an ordinary transformers model directory through transformers' own GGUF
loader (it dequantizes the weights and rebuilds the tokenizer with its chat template); :func:`write_gguf` writes a
Llama-family model and its BPE tokenizer as a GGUF file that llama.cpp runs and that loader reads back.
Both need the ``gguf`` package (``pip install 'aha[gguf]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
CONVERT_DTYPES = ("float32", "bfloat16")  # what convert_gguf saves
# what write_gguf stores the matrices in (norms stay f32, as llama.cpp wants); q8_0: llama.cpp's 8-bit blocks of 32
# (a matrix whose rows are not a whole number of blocks stays f16, as llama.cpp's converter does)
WRITE_DTYPES = ("f32", "f16", "bf16", "q8_0")
SOURCE_FILE = "gguf_source.json"  # written into a converted directory: the GGUF it came from (its sha256) and dtype
MODELS_DIR_ENV = "AHA_MODELS_DIR"  # where aha keeps the models it fetches or converts (default ~/.cache/aha/models)

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) of the byte-level pre-tokenizers write_gguf recognises, as
# tokenizer.json spells them; and the ones transformers' GGUF loader does not rebuild, which convert_gguf restores.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class GGUFMissingError(ImportError, ValueError):
    """The ``gguf`` package is not installed (a ValueError too, so a command reports it as one line)."""


def require_gguf():
    """The ``gguf`` module, or :class:`GGUFMissingError` saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise GGUFMissingError(
            "reading and writing GGUF files needs the gguf package: pip install 'aha[gguf]'", name="gguf"
        ) from None
    return gguf


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# GGUF metadata value types (gguf.GGUFValueType): fixed-size ones as struct formats; 8 is a string, 9 an array
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (``general.architecture``, ``tokenizer.ggml.pre``...; arrays as
    their lengths), read from its header without the ``gguf`` package and without walking its tensors, which
    ``gguf.GGUFReader`` takes seconds over for a 49k-token vocabulary. FileNotFoundError for a missing path,
    ValueError for anything that is not a GGUF file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"GGUF file {p} does not exist")
    if not p.is_file():
        raise ValueError(f"{p} is not a GGUF file (it is a directory)")
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{p} is not a GGUF file (it does not start with the bytes 'GGUF')")
        try:
            return read_header(f)
        except (struct.error, UnicodeDecodeError, KeyError, ValueError) as e:
            raise ValueError(f"{p} is a damaged or unsupported GGUF file ({e})") from None


def read_header(f) -> dict[str, Any]:
    """The metadata after the magic bytes of an open GGUF file (versions 2 and 3)."""

    def unpack(fmt: str):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def string() -> str:
        return f.read(unpack("<Q")).decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:  # an array: skipped, its length kept
            item, count = unpack("<I"), unpack("<Q")
            if item in SCALAR_FORMATS:
                f.seek(count * struct.calcsize(SCALAR_FORMATS[item]), 1)
            else:
                for _ in range(count):
                    value(item)
            return count
        return unpack(SCALAR_FORMATS[kind])

    version = unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (this reader knows 2 and 3)")
    unpack("<Q")  # tensor count
    return {string(): value(unpack("<I")) for _ in range(unpack("<Q"))}


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file (``llama``, ``qwen2``...); errors as :func:`gguf_metadata`."""
    arch = gguf_metadata(path).get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path} is a GGUF file without general.architecture")
    return arch


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Convert a GGUF file into a model directory `out_dir` (weights in `dtype`, tokenizer with chat template,
    generation config; plus ``gguf_source.json``) and return it.

    Loads with transformers' GGUF loader (quantized weights are dequantized), rebuilds a plain model from the
    config without its ``quantization_config`` (transformers refuses to save a GGUF-loaded model), and saves with
    :func:`aha.models.loading.save_model`. Written to a temporary directory beside `out_dir` and renamed into place,
    so a failure leaves nothing behind; an `out_dir` that exists and is not empty is refused.
    """
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(CONVERT_DTYPES)}, got {dtype!r}")
    src, out = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty directory; choose another output directory")
    arch = gguf_architecture(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model, tok = load_gguf(src, arch, dtype)
        from aha.models.loading import save_model

        save_model(model, tok, tmp)
        source = {"gguf": src.name, "sha256": file_sha256(src), "architecture": arch, "dtype": dtype}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); rename needs it gone
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return out


def models_dir() -> Path:
    """Where aha keeps the models it fetches and converts: ``$AHA_MODELS_DIR``, else ``~/.cache/aha/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.home() / ".cache" / "aha" / "models").expanduser()


def converted_gguf(gguf_path: str | Path) -> Path:
    """The model directory of a GGUF file converted (float32) into ``<models_dir>/gguf/<sha256 of the file>``: made
    the first time, reused after (a file with other contents gets its own)."""
    from aha.console import console

    src = Path(gguf_path).expanduser()
    gguf_architecture(src)  # a missing or non-GGUF file is refused before anything is hashed or made
    out = models_dir() / "gguf" / file_sha256(src)[:32]
    if (out / SOURCE_FILE).is_file():  # written before the rename: a directory that has it is complete
        return out
    console.print(f"converting {src} into {out} (once; reused next time)")
    try:
        return convert_gguf(src, out)
    except ValueError:
        if (out / SOURCE_FILE).is_file():  # another process converted the same file meanwhile
            return out
        raise


def load_gguf(path: Path, arch: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(plain model in `dtype`, tokenizer) from a GGUF file, through transformers' GGUF loader."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf()
    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(**where)
        tok = AutoTokenizer.from_pretrained(**where)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ValueError(
            f"{path}: transformers {transformers.__version__}'s GGUF loader cannot read it (architecture {arch!r}): {e}"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights():  # parameters on the meta device (no random init), buffers (RoPE) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del loaded
    restore_pre_tokenizer(tok, path)
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return model.to(getattr(torch, dtype)).eval(), tok


def restore_pre_tokenizer(tok, path: Path) -> None:
    """Give `tok` the pre-tokenizer its GGUF names (``tokenizer.ggml.pre``) where transformers' loader falls back
    to GPT-2's: ``smollm`` (SmolLM/SmolLM2) splits digits one by one before the GPT-2 rules, as the model's own
    tokenizer.json does (with GPT-2's alone, a vocabulary with digit merges would join them)."""
    from tokenizers import pre_tokenizers

    if gguf_metadata(path).get("tokenizer.ggml.pre") == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )


def write_gguf(model, tokenizer, path: str | Path, dtype: str = "f32") -> Path:
    """Write a Llama-family model and its tokenizer as a GGUF file `path` (tensors and metadata named as llama.cpp's
    converter names them) and return it. `dtype`: f32, f16, bf16 or q8_0 for the matrices; norms stay f32.

    The tokenizer must be a BPE one: byte-level (GPT-2 style, as SmolLM2 and Llama 3 use), or character-level
    without merges (aha's tiny one), whose tokens are respelled in the byte alphabet. The file is written beside
    `path` and renamed into place.
    """
    gguf = require_gguf()
    if dtype not in WRITE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(WRITE_DTYPES)}, got {dtype!r}")
    cfg = llama_config(model)
    tokens, types, merges, pre = gguf_vocab(tokenizer, cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))

    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}  # fmt: skip
        w.add_file_type(file_type[dtype])
        add_tokenizer(w, tokenizer, tokens, types, merges, pre)
        for name, data, raw in gguf_tensors(gguf, model, cfg, dtype):
            w.add_tensor(name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def llama_config(model):
    """`model`'s config, checked to be one write_gguf can write and transformers' loader reads back as it was."""
    if hasattr(model, "peft_config"):
        raise ValueError("write_gguf writes plain models: merge the LoRA adapter first (merge_and_unload)")
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"write_gguf writes Llama-family models (model_type 'llama'), not {cfg.model_type!r}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"write_gguf writes the default RoPE only; this model has {rope}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            raise ValueError(f"write_gguf cannot write a Llama with {flag}=True (the GGUF loader drops biases)")
    if cfg.hidden_act != "silu":
        raise ValueError(f"write_gguf writes Llamas with hidden_act silu, not {cfg.hidden_act!r}")
    return cfg


def gguf_tensors(gguf, model, cfg, dtype: str):
    """(GGUF name, array, raw ggml type or None) for each weight of a Llama. q/k rows are permuted as llama.cpp's
    converter does (transformers' loader undoes it); a tied lm_head is left out (its absence means tied)."""
    import torch

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ValueError(f"write_gguf has no GGUF name for the tensor {hf_name}")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if stem.endswith("self_attn.q_proj"):
            data = permute_rope_rows(data, cfg.num_attention_heads)
        elif stem.endswith("self_attn.k_proj"):
            data = permute_rope_rows(data, cfg.num_key_value_heads)
        kind = dtype
        if kind == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
            kind = "f16"  # rows that are not whole blocks
        if data.ndim == 1 or kind == "f32":
            yield f"{gguf_name}.{suffix}", data, None
        elif kind == "f16":
            yield f"{gguf_name}.{suffix}", data.astype("float16"), None
        else:  # bf16 (numpy has none) and q8_0: gguf packs them as raw bytes of that ggml type
            raw = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
            yield f"{gguf_name}.{suffix}", gguf.quants.quantize(data, raw), raw


def permute_rope_rows(w, n_head: int):
    """llama.cpp's q/k row order: within each head, the rotary halves interleaved (`w`: [n_head * head_dim, in])."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer_name(spec: dict | None, byte_level: bool) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (``gpt-2``, ``smollm``, ``llama-bpe``)."""
    if spec is None and not byte_level:
        return "gpt-2"  # character level without merges: how the text is split cannot change its tokens
    if spec is not None and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    parts = (spec or {}).get("pretokenizers") or []
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    raise ValueError(f"write_gguf does not know llama.cpp's name for the pre-tokenizer {json.dumps(spec)}")


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    """(tokens by id, token types, merges ``"a b"``, pre-tokenizer name) as llama.cpp's ``gpt2`` vocabulary
    stores them, padded to the model's `vocab_size` with unused ``[PAD<i>]`` tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    TokenType = require_gguf().TokenType  # noqa: N806 (gguf's enum)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"write_gguf needs a fast tokenizer (tokenizer.json), not {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"write_gguf writes BPE tokenizers, not {spec['model']['type']}")
    byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    if merges and not byte_level:
        raise ValueError("write_gguf writes byte-level BPE tokenizers, or character-level ones without merges")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"), byte_level)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size {vocab_size}")
    spell = bytes_to_unicode()
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    for token, i in tokenizer.get_vocab().items():
        if i in added:
            tokens[i] = added[i].content
            types[i] = int(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens[i] = token if byte_level else "".join(spell[b] for b in token.encode("utf-8"))
            types[i] = int(TokenType.NORMAL)
    return tokens, types, merges, pre


def add_tokenizer(w, tokenizer, tokens: list[str], types: list[int], merges: list[str], pre: str) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    else:  # GGUF has no empty arrays; without merges transformers' loader derives them from scores (none here)
        w.add_token_scores([0.0] * len(tokens))
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id}
    ids["pad"] = tokenizer.pad_token_id
    for kind, token_id in ids.items():
        if token_id is not None:
            getattr(w, f"add_{kind}_token_id")(token_id)
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    w.add_add_bos_token(len(full) > len(plain) and full[0] == tokenizer.bos_token_id)
    w.add_add_eos_token(len(full) > len(plain) and full[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        w.add_chat_template(tokenizer.chat_template)
