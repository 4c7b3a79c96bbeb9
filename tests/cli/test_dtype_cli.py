"""``--dtype`` of ``aha eval``, ``aha sample`` and ``aha chat``: the loaded model's dtype, and the bf16 refusal."""

import json

import pytest
import torch

import aha.cli.chat as chat
import aha.devices
import aha.workflows.sampling
from aha.cli import main
from aha.workflows.inference import DTYPES


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(aha.devices.platform, "system", lambda: "Linux")


def test_the_option_offers_the_workflow_choices():
    from aha.cli import build_parser

    parser, _ = build_parser()
    for command in ("eval", "sample", "chat"):
        action = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions if a.dest == "dtype")
        assert tuple(action.choices) == DTYPES and action.default == "auto"


@pytest.mark.parametrize(("dtype", "expected"), [("bfloat16", "bfloat16"), ("float32", "float32"), ("auto", "float32")])
def test_eval_dtype(model_dir, tmp_path, capsys, bf16_cpu, dtype, expected):
    out = tmp_path / "ev"
    argv = ["eval", "--model", model_dir, "--data", "arithmetic", "--n", "1", "--limit", "2", "--max-new-tokens", "3"]
    assert main([*argv, "--dtype", dtype, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dtype"] == expected and summary["device"] == "cpu"
    assert summary["max_new_tokens"] == 3 and summary["batch_size"] == 16  # the flag wins; the CPU default
    header = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("eval m on arithmetic"))
    assert "max_new_tokens 3, batch_size 16 (default on cpu)" in header and f"{expected} on cpu" in header


def test_sample_dtype(model_dir, tmp_path, monkeypatch, bf16_cpu):
    seen = []
    original = aha.workflows.sampling.run_sample

    def recording(engine, *args, **kwargs):
        seen.append(engine.model.dtype)
        return original(engine, *args, **kwargs)

    monkeypatch.setattr(aha.workflows.sampling, "run_sample", recording)
    argv = ["sample", "--model", model_dir, "--data", "arithmetic", "--n", "1", "--limit", "2", "--max-new-tokens", "3"]
    assert main([*argv, "--out", str(tmp_path / "a.jsonl"), "--dtype", "bfloat16"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.jsonl"), "--dtype", "float32", "--backend", "hf"]) == 0
    assert seen == [torch.bfloat16, torch.float32]


def test_chat_dtype(model_dir, monkeypatch, capsys, bf16_cpu):
    seen = []
    original = chat.reply

    def recording(model, *args, **kwargs):
        seen.append(model.dtype)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(chat, "reply", recording)
    assert main(["chat", "--model", model_dir, "1+1", "--max-new-tokens", "3", "--dtype", "bfloat16"]) == 0
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--data", "arithmetic"],
        ["sample", "--data", "arithmetic", "--out", "OUT"],
        ["chat", "hi"],
    ],
)
def test_bf16_refused_on_a_cpu_without_it(model_dir, tmp_path, capsys, no_bf16_cpu, argv):
    argv = [tmp_path / "s.jsonl" if x == "OUT" else x for x in argv]
    assert main([*map(str, argv), "--model", model_dir, "--dtype", "bfloat16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"aha {argv[0]}: error: --dtype bfloat16: this CPU has no bf16 instructions")
    assert "use fp32" in err and not (tmp_path / "s.jsonl").exists()


def test_sample_dtype_refusals(model_dir, tmp_path, capsys):
    base = ["sample", "--model", model_dir, "--data", "arithmetic", "--out", str(tmp_path / "s.jsonl")]
    assert main([*base, "--dtype", "float32", "--endpoint", "http://127.0.0.1:9/v1"]) == 1
    assert "--dtype: the server at --endpoint" in capsys.readouterr().err
    assert main([*base, "--backend", "vllm", "--dtype", "float32", "--vllm-dtype", "bfloat16"]) == 1
    assert "--dtype float32 and --vllm-dtype bfloat16 disagree" in capsys.readouterr().err
    assert main([*base, "--vllm-dtype", "float16"]) == 1
    assert "--vllm-dtype is for --backend vllm" in capsys.readouterr().err
