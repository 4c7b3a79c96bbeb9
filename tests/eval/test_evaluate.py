"""The evaluator: metrics from scripted completions, its seeding scheme, and a real tiny model end to end."""

import pytest
import torch

import aha.eval.evaluate as evaluate_mod
from aha.eval.evaluate import EvalConfig, evaluate
from aha.eval.metrics import Verifier
from aha.models.tiny import build_tiny
from aha.rollout.engine import generate_texts
from aha.rollout.sampler import SamplingParams
from aha.tasks import get_task

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(**SIZES)


def _rows(questions: dict[str, str]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in questions.items()]


def _scripted(monkeypatch, script: dict[str, list[str]], calls: list | None = None) -> None:
    """generate_texts answers question q with script[q][0] when greedy, else script[q][i] for its i-th sample."""
    seen: dict[str, int] = {}

    def fake(model, tok, prompts, params, *, batch_size, seed, on_batch=None, backend="fast"):
        if calls is not None:
            calls.append((params.greedy, seed, batch_size, len(prompts)))
        texts = []
        for p in prompts:
            q = p[-1]["content"]
            if params.greedy:
                texts.append(script[q][0])
            else:
                seen[q] = seen.get(q, 0) + 1
                texts.append(script[q][seen[q] - 1])
        on_batch(len(prompts))
        return texts, [len(t) for t in texts], ["never ends" in t for t in texts]

    monkeypatch.setattr(evaluate_mod, "generate_texts", fake)


def test_metrics_from_scripted_completions(tiny, monkeypatch):
    """Known pass@k, maj@k, format rate, lengths and truncation; GSM8K grading of free text."""
    model, tok = tiny
    script = {
        "q1": ["<think>a</think>7", "<think>b</think>8", "<think>c</think>8", "<think>d</think>7"],
        "q2": ["<think>x</think>The answer is 1,000.", "9", "<think>never ends", "<answer>1000</answer>"],
    }
    _scripted(monkeypatch, script)
    records, m = evaluate(
        model, tok, _rows({"q1": "7", "q2": "1000"}), Verifier("gsm8k"), EvalConfig(n=4, ks=[1, 2, 4])
    )
    assert m["greedy_accuracy"] == 1.0 and m["n_questions"] == 2
    # q1: c=2 of 4; q2: c=2 of 4 ("1,000" and "<answer>1000")
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)
    assert m["pass@4"] == 1.0
    # maj@2: q1 "7" vs "8" tie -> "7" (first) correct; q2 "1000" vs "9" tie -> "1000" correct
    assert m["maj@1"] == 1.0 and m["maj@2"] == 1.0 and m["maj@4"] == 1.0
    assert m["format_rate"] == pytest.approx(5 / 8)  # q1: all 4 are thought-then-answer; q2: only the first
    assert m["greedy_format_rate"] == 1.0
    assert m["truncated"] == pytest.approx(1 / 8) and m["greedy_truncated"] == 0.0
    texts = [t for q in script for t in script[q]]
    assert m["mean_length"] == pytest.approx(sum(map(len, texts)) / 8) and m["max_length"] == max(map(len, texts))
    assert m["greedy_mean_length"] == pytest.approx((len(script["q1"][0]) + len(script["q2"][0])) / 2)
    assert [r["n_correct"] for r in records] == [2, 2]
    assert records[1]["samples"][2] == {
        "completion": "<think>never ends",
        "extracted": None,
        "correct": False,
        "format_ok": False,
        "length": len("<think>never ends"),
        "truncated": True,
    }
    assert records[0]["pass@k"] == {"1": 0.5, "2": pytest.approx(5 / 6), "4": 1.0}


def test_format_rate_is_parse_reasoning(tiny, monkeypatch):
    """One closed thought, then one non-empty answer: a second <answer> block or an empty one is not well formed."""
    model, tok = tiny
    script = {
        "a": ["<think>x</think><answer>1</answer>"],
        "b": ["<think>x</think><answer>1</answer><answer>2</answer>"],
        "c": ["<think>x</think><answer> </answer>"],
        "d": ["<think></think>1"],
    }
    _scripted(monkeypatch, script)
    _, m = evaluate(model, tok, _rows(dict.fromkeys(script, "1")), Verifier("gsm8k"), EvalConfig(n=1, ks=[1]))
    assert m["greedy_format_rate"] == pytest.approx(2 / 4) and m["format_rate"] == pytest.approx(2 / 4)


def test_seeding_scheme(tiny, monkeypatch):
    """Greedy from `seed`, the samples from `seed + 1`, each pass in batches of `batch_size` (n samples in a row)."""
    model, tok = tiny
    calls: list = []
    _scripted(monkeypatch, {"q": ["<answer>1</answer>"] * 3}, calls)
    evaluate(model, tok, _rows({"q": "1"}), Verifier("gsm8k"), EvalConfig(n=3, ks=[1], seed=5, batch_size=7))
    assert calls == [(True, 5, 7, 1), (False, 6, 7, 3)]


def test_generate_texts_one_generator_across_batches(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": f"{i}+{i}"}] for i in range(5)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    sizes: list[int] = []
    a = generate_texts(model, tok, prompts, params, batch_size=2, seed=3, on_batch=sizes.append)
    assert sizes == [2, 2, 1]
    assert a == generate_texts(model, tok, prompts, params, batch_size=2, seed=3)  # deterministic in the seed
    assert a != generate_texts(model, tok, prompts, params, batch_size=2, seed=4)
    texts, lengths, truncated = a
    assert len(texts) == 5 and all(1 <= n <= 6 for n in lengths)
    assert all(n == 6 for t, n in zip(truncated, lengths) if t)  # truncated: the whole budget, no EOS


def test_evaluate_a_real_model(tiny):
    model, tok = tiny
    task = get_task("arithmetic", digits=1)
    rows = task.rows("eval", 4, 0)
    model.train()
    cfg = EvalConfig(n=2, ks=[1, 2], max_new_tokens=5, batch_size=3)
    records, m = evaluate(model, tok, rows, Verifier("task", task), cfg)
    assert model.training  # left in the mode it was in
    assert (records, m) == evaluate(model, tok, rows, Verifier("task", task), cfg)  # deterministic
    flat = [s for r in records for s in r["samples"]]
    assert m["pass@1"] == pytest.approx(sum(s["correct"] for s in flat) / len(flat))
    assert m["max_length"] <= 5 and m["truncated"] == pytest.approx(sum(s["truncated"] for s in flat) / len(flat))
    assert all(r["greedy"]["correct"] == task.check(r["greedy"]["completion"], row) for r, row in zip(records, rows))


def test_evaluate_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="no rows"):
        evaluate(model, tok, [], Verifier("gsm8k"), EvalConfig())
    with pytest.raises(ValueError, match="--k 8 is larger than --n 4"):
        evaluate(model, tok, _rows({"q": "1"}), Verifier("gsm8k"), EvalConfig(n=4, ks=[1, 8]))


def test_sizes_follow_the_device(tiny, monkeypatch):
    """max_new_tokens / batch_size left None: 256 / 16 on a CPU, 512 / 64 on a GPU; explicit values are kept."""
    assert EvalConfig().for_device("cpu").max_new_tokens == 256 and EvalConfig().for_device("cpu").batch_size == 16
    gpu = EvalConfig().for_device(torch.device("cuda", 0))
    assert (gpu.max_new_tokens, gpu.batch_size) == (512, 64)
    mine = EvalConfig(max_new_tokens=7, batch_size=3)
    assert mine.for_device("cuda") == mine and EvalConfig(batch_size=3).for_device("cpu").max_new_tokens == 256
    model, tok = tiny
    seen = []

    def fake(model, tok, prompts, params, *, batch_size, seed, on_batch=None, backend="fast"):
        seen.append((params.max_new_tokens, batch_size))
        on_batch(len(prompts))
        return ["<answer>1</answer>"] * len(prompts), [1] * len(prompts), [False] * len(prompts)

    monkeypatch.setattr(evaluate_mod, "generate_texts", fake)
    evaluate(model, tok, _rows({"q": "1"}), Verifier("gsm8k"), EvalConfig(n=1, ks=[1]))  # the tiny model: on the CPU
    assert seen == [(256, 16), (256, 16)]
    with pytest.raises(ValueError, match="--max-new-tokens and --batch-size must be at least 1"):
        EvalConfig(batch_size=0)


def _progress_run(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(evaluate_mod, "PROGRESS_EVERY_S", 0.0)
    task = get_task("arithmetic", digits=1)
    cfg = EvalConfig(n=2, ks=[1], max_new_tokens=3, batch_size=1)
    evaluate(model, tok, task.rows("eval", 2, 0), Verifier("task", task), cfg, label="eval tiny")


def test_progress_lines_where_the_console_is_not_a_terminal(tiny, monkeypatch, capsys):
    monkeypatch.delenv("AHA_NO_PROGRESS", raising=False)
    _progress_run(tiny, monkeypatch)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("eval tiny: ")]
    assert lines[0].startswith("eval tiny: greedy 1/2 rows · ") and lines[0].endswith(" s")  # one per batch
    ends = [x for x in lines if x.startswith("eval tiny: greedy 2/2 rows")]
    assert len(ends) == 1 and " · greedy accuracy " in ends[0]  # the phase's end once, with its accuracy
    assert lines[-1].startswith("eval tiny: sampled 4/4 completions · ") and " · pass@1 " in lines[-1]


def test_no_progress_lines_with_aha_no_progress(tiny, monkeypatch, capsys):
    monkeypatch.setenv("AHA_NO_PROGRESS", "1")  # what CI sets; aha train's bar is off with it too
    _progress_run(tiny, monkeypatch)
    assert "eval tiny:" not in capsys.readouterr().err


class _Engine:
    """A TextEngine that answers each question with its own answer (or a wrong one for 'bad' questions), and
    records its calls."""

    def __init__(self):
        self.calls = []

    def complete_with_lengths(self, prompts, params, seed):
        self.calls.append((params.greedy, seed, len(prompts)))
        texts = [f"<think>x</think><answer>{'0' if 'bad' in p[-1]['content'] else '5'}</answer>" for p in prompts]
        return texts, [7] * len(prompts), [False] * len(prompts)


def test_an_engine_generates_instead_of_the_model(tiny):
    """evaluate(engine=...) with no model: every completion comes from the engine, one call per phase, graded as
    the model's would be (what `aha eval --backend vllm` runs)."""
    _, tok = tiny
    rows = _rows({"2+3 ok": "5", "4+1 ok": "5", "bad 1+1": "2"})
    engine = _Engine()
    cfg = EvalConfig(n=4, ks=[1, 4], max_new_tokens=8, batch_size=2, seed=3)
    records, metrics = evaluate(None, tok, rows, Verifier("gsm8k"), cfg, engine=engine)
    assert engine.calls == [(True, 3, 3), (False, 4, 12)]  # greedy rows, then the n samples of each
    assert metrics["greedy_accuracy"] == pytest.approx(2 / 3) and metrics["pass@1"] == pytest.approx(2 / 3)
    assert metrics["mean_length"] == 7 and metrics["truncated"] == 0.0
    assert [r["n_correct"] for r in records] == [4, 4, 0]
    with pytest.raises(ValueError, match="a model or an engine"):
        evaluate(None, tok, rows, Verifier("gsm8k"), cfg)


def test_backend_vllm_without_vllm_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    from aha.cli import main

    build_tiny(tmp_path / "m", **SIZES)
    capsys.readouterr()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    args = ["eval", "--model", str(tmp_path / "m"), "--data", "arithmetic", "--limit", "2", "--backend", "vllm"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--backend vllm needs vLLM" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--batch-size", "4"]) == 1
    assert "--batch-size is for --backend fast" in capsys.readouterr().err
