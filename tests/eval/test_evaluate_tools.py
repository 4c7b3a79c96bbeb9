"""Evaluation with tools: multi-turn completions graded on their last turn, tool metrics, and aha chat showing the
calls and results. A scripted sampler plays the model, so every call is known."""

from __future__ import annotations

import json

import pytest
import torch

from aha.cli import main
from aha.eval.evaluate import EvalConfig, evaluate
from aha.eval.metrics import Verifier
from aha.models.tiny import build_tiny
from aha.tools import calculator

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(**SIZES)


def call(expr: str) -> str:
    return "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": expr}}) + "</tool_call>"


def scripted(tok, decide):
    """A stand-in for aha.rollout.sampler.sample: `decide(prompt_text, greedy)` gives each row's turn text."""

    def sample(model, ids, mask, params, eos, pad, generator=None, backend="fast", **kw):
        rows = []
        for r, m in zip(ids, mask):
            text = decide(tok.decode(r[m.bool()].tolist()), params.greedy)
            rows.append((tok(text, add_special_tokens=False)["input_ids"] + [eos[0]])[: params.max_new_tokens])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    return sample


def answer_after_tool(text: str, greedy: bool) -> str:
    """Greedy: call the calculator, then answer with its result; sampled: guess 0."""
    if "<|im_start|>tool\n" in text:
        return "<answer>" + text.rsplit("<|im_start|>tool\n", 1)[1].split("<|im_end|>")[0] + "</answer>"
    question = text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
    return call(question) if greedy else "<answer>0</answer>"


def test_evaluate_with_tools_grades_the_last_turn(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr("aha.rollout.sampler.sample", scripted(tok, answer_after_tool))
    rows = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in (("347*862", "299114"), ("2+2", "4"))]
    records, m = evaluate(
        model, tok, rows, Verifier("math"), EvalConfig(n=2, ks=[1], max_new_tokens=200), tools=[calculator]
    )
    assert m["greedy_accuracy"] == 1.0 and m["pass@1"] == 0.0
    assert m["greedy_tool_use_rate"] == 1.0 and m["greedy_tool_calls"] == 1.0 and m["tool_use_rate"] == 0.0
    assert m["greedy_tool_failure_rate"] == 0.0
    g = records[0]["greedy"]
    assert g["calls"] == 1 and g["turns"] == 2 and g["completion"] == "<answer>299114</answer>"
    assert g["conversation"][1] == {"role": "tool", "name": "calculator", "content": "299114"}
    # the length counts the model's own tokens: the call, its EOS, the answer, its EOS
    n_tokens = len(tok(call("347*862") + "<answer>299114</answer>", add_special_tokens=False)["input_ids"])
    assert g["length"] == n_tokens + 2
    with pytest.raises(ValueError, match="local model"):
        evaluate(
            None,
            tok,
            rows,
            Verifier("math"),
            EvalConfig(n=2, ks=[1], max_new_tokens=20),
            engine=object(),
            tools=[calculator],
        )


def test_chat_shows_the_calls_and_their_results(tmp_path, capsys, monkeypatch):
    model, tok = build_tiny(**SIZES)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    seen = []

    def decide(text, greedy):
        seen.append(text)
        if text.count("<|im_start|>tool\n") == 0:
            return call("6*7")
        if text.count("<|im_start|>tool\n") == 1:
            return call("6*/7")  # a bad expression: the calculator's error goes back to the model
        return "<answer>42</answer>"

    monkeypatch.setattr("aha.rollout.engine.sample", scripted(tok, decide))
    rc = main(["chat", "What is 6*7?", "--model", str(tmp_path / "m"), "--tool", "calculator", "--temperature", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert '→ calculator({"expression": "6*7"})' in out and "← 42" in out
    assert '→ calculator({"expression": "6*/7"})' in out and "← Error" in out
    assert out.rstrip().endswith("42</answer>")
    assert len(seen) == 3 and "<|im_start|>tool\n42<|im_end|>" in seen[1]  # the result reached the model
    seen.clear()
    args = ["chat", "What is 6*7?", "--model", str(tmp_path / "m"), "--tool", "calculator", "--temperature", "0"]
    assert main([*args, "--max-tool-calls", "1"]) == 0  # the second call is left unrun: the answer is that turn
    out = capsys.readouterr().out
    assert out.count("→ calculator") == 1 and len(seen) == 2
    assert main([*args, "--max-tool-calls", "-1"]) == 1
    assert "--max-tool-calls must be >= 0" in capsys.readouterr().err
    rc = main(["chat", "hi", "--model", str(tmp_path / "m"), "--tool", "nosuch"])
    assert rc != 0 and "unknown tool 'nosuch'" in capsys.readouterr().err
