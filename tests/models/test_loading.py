"""``save_model``: what it writes loads back with plain transformers / peft, its generation config stops on the
tokenizer's EOS, and the model in memory is left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from aha.models.loading import load_model, save_model


def _gen(path) -> dict:
    return json.loads((path / "generation_config.json").read_text())


def test_a_model_reloads_with_the_auto_classes(tmp_path, small_tiny) -> None:
    model, tok = small_tiny
    out = save_model(model, tok, tmp_path / "deep" / "m")  # parents are created
    assert out == tmp_path / "deep" / "m"
    again = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    assert _gen(out)["eos_token_id"] == tok.eos_token_id


def test_the_generation_config_stops_on_the_tokenizer_eos_and_the_model_is_untouched(tmp_path, small_tiny) -> None:
    model, tok = small_tiny
    other = tok.convert_tokens_to_ids("<|im_start|>")
    model.generation_config = GenerationConfig(eos_token_id=other, pad_token_id=None)  # a base model's own EOS
    out = save_model(model, tok, tmp_path / "m")
    assert _gen(out)["eos_token_id"] == [tok.eos_token_id, other]  # the union: the tokenizer's first
    assert _gen(out)["pad_token_id"] == tok.pad_token_id
    assert model.generation_config.eos_token_id == other and model.generation_config.pad_token_id is None
    reloaded, _ = load_model(out)
    save_model(reloaded, tok, tmp_path / "again")  # saving a saved model changes nothing
    assert _gen(tmp_path / "again")["eos_token_id"] == [tok.eos_token_id, other]


def test_an_adapter_is_saved_as_an_adapter_with_its_base_generation_config(tmp_path, small_tiny) -> None:
    from peft import LoraConfig, get_peft_model

    model, tok = small_tiny
    model.generation_config.eos_token_id = None
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    out = save_model(peft_model, tok, tmp_path / "a")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json"} <= names
    assert "model.safetensors" not in names  # the adapter only
    assert _gen(out)["eos_token_id"] == tok.eos_token_id


def test_state_dict_replaces_the_modules_weights(tmp_path, small_tiny) -> None:
    model, tok = small_tiny
    weights = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    out = save_model(model, tok, tmp_path / "m", state_dict=weights)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert all(bool((v == 0.5).all()) for v in again.state_dict().values())
    assert not all(bool((v == 0.5).all()) for v in model.state_dict().values())


def test_a_model_without_a_generation_config_writes_none(tmp_path, small_tiny) -> None:
    _, tok = small_tiny

    class Plain:  # anything with save_pretrained, e.g. a model that does not generate
        def save_pretrained(self, out, state_dict=None) -> None:
            (out / "config.json").write_text("{}")

    out = save_model(Plain(), tok, tmp_path / "p")
    assert {p.name for p in out.iterdir()} >= {"config.json", "tokenizer_config.json"}
    assert not (out / "generation_config.json").exists()


def test_a_pipeline_directory_means_its_last_finished_training_stage(tmp_path, small_tiny):
    from aha.models.loading import resolve_model_path, save_model

    model, tok = small_tiny
    pipe = tmp_path / "demo"
    pipe.mkdir()
    (pipe / "pipeline.yaml").write_text("stages: []\n")
    with pytest.raises(ValueError, match="no finished training stage"):
        resolve_model_path(pipe)
    for stage in ("1-cold-start", "2-grpo", "10-late"):
        save_model(model, tok, pipe / stage / "model")
        (pipe / stage / "config.yaml").write_text("{}\n")
    for stage in ("1-cold-start", "2-grpo"):
        (pipe / stage / "stage_done.json").write_text("{}\n")
    assert resolve_model_path(pipe) == str(pipe / "2-grpo" / "model")  # 10-late has not finished
    (pipe / "10-late" / "stage_done.json").write_text("{}\n")
    assert resolve_model_path(pipe) == str(pipe / "10-late" / "model")  # by stage number, not by name


def test_load_model_passes_dtype_and_attention_to_from_pretrained(tmp_path, small_tiny):
    model, tok = small_tiny
    save_model(model, tok, tmp_path / "m")
    default, _ = load_model(tmp_path / "m")
    eager, _ = load_model(tmp_path / "m", dtype=torch.bfloat16, attn_implementation="eager")
    assert next(default.parameters()).dtype == torch.float32 and next(eager.parameters()).dtype == torch.bfloat16
    assert eager.config._attn_implementation == "eager" != default.config._attn_implementation


@pytest.mark.parametrize(
    ("text", "local"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", False),  # owner/name: a Hub id
        ("runs/does_not_exist", True),  # runs/ is a directory here
        ("some/missing/path", True),  # more than one '/'
        ("./model", True),
        ("~/model", True),
        ("/abs/model", True),
        ("owner/name/", True),
        ("dir\\model", True),
        ("gpt2", True),  # not owner/name: only a local directory could be meant
    ],
)
def test_what_looks_like_a_local_path_is_never_a_hub_id(tmp_path, monkeypatch, text, local) -> None:
    from aha.models.loading import looks_local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local(text) is local


def test_a_missing_model_path_is_named_and_never_tried_on_the_hub(tmp_path, monkeypatch) -> None:
    from aha.models.loading import resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("some/missing/path", "runs/does_not_exist", "./nope"):
        with pytest.raises(FileNotFoundError, match=f"^{path}: no such directory \\(and not a Hub id\\)$"):
            load_model(path)
    assert resolve_model_path("owner/name") == "owner/name"
    with pytest.raises(FileNotFoundError, match="^owner/name: no such directory$"):  # hub=False: local only
        resolve_model_path("owner/name", hub=False)
