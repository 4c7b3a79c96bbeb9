"""Kill -9 a real training process, resume it, and get bit-identical weights and the same metrics lines."""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import os, random, signal, sys
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from aha import GRPOConfig, GRPOTrainer
    from aha.models.tiny import build_tiny
    from aha.data.prompts import completion_text
    from aha.tasks import get_task
    from aha.train import checkpoint

    out, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def noisy_digits(completions, **kw):  # uses the global python and numpy RNGs: they must be restored too
        return [
            sum(ch.isdigit() for ch in completion_text(c)) / max(1, len(completion_text(c)))
            + 0.01 * random.random() + 0.01 * float(np.random.rand())
            for c in completions
        ]

    def die(state, row):
        if mode == "kill" and state.global_step == k:
            os.kill(os.getpid(), signal.SIGKILL)  # after metrics line k, before checkpoint-k

    if mode == "kill-in-save":  # die while writing checkpoint-k: after its files, before the rename
        real = os.replace
        def replace(src, dst):
            if str(src).endswith(f".checkpoint-{k}.tmp"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        checkpoint.os.replace = replace

    random.seed(1)
    np.random.seed(1)
    model, tok = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    cfg = GRPOConfig(
        output_dir=out, learning_rate=3e-3, max_steps=8, num_generations=4, per_device_train_batch_size=4,
        steps_per_generation=2, num_iterations=2, max_completion_length=8, logging_steps=1, save_steps=1,
        beta=0.04, seed=0, use_cpu=True, save_total_limit=3,
    )
    rows = get_task("arithmetic").rows("train", 16, seed=0)
    trainer = GRPOTrainer(model, noisy_digits, cfg, rows, processing_class=tok, callbacks=[die])
    trainer.train(resume_from_checkpoint="auto" if mode == "resume" else None)
    torch.save(trainer.model.state_dict(), os.path.join(out, "final.pt"))
    """
)
TIMING = {"step_time"}


def _run(tmp_path, out, mode, k=0):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "AHA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), mode, str(k)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc


def _finish(proc, expect_rc=0):
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == expect_rc, err.decode()[-3000:]


def _lines(out):
    return [
        {k: v for k, v in json.loads(x).items() if k not in TIMING}
        for x in (out / "metrics.jsonl").read_text().splitlines()
    ]


def _assert_same_run(a, b):
    wa = torch.load(a / "final.pt", weights_only=True)
    wb = torch.load(b / "final.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    la, lb = _lines(a), _lines(b)
    assert [x["step"] for x in la] == list(range(1, 9))
    assert la == lb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    proc = _run(tmp, tmp / "run", "full")
    _finish(proc)
    return tmp / "run"


def test_kill9_then_resume_is_bit_identical(tmp_path, reference):
    k = random.Random().randint(2, 7)  # any step after the first checkpoint
    out = tmp_path / "run"
    _finish(_run(tmp_path, out, "kill", k), expect_rc=-9)
    assert not (out / "final.pt").exists()
    assert len(_lines(out)) == k  # metrics line k was written, checkpoint-k was not
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert f"checkpoint-{k - 1}" in names and f"checkpoint-{k}" not in names
    _finish(_run(tmp_path, out, "resume"))
    _assert_same_run(reference, out)
    # save_total_limit=3: only the three newest survive
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-6",
        "checkpoint-7",
        "checkpoint-8",
    ]


def test_kill9_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, reference):
    k = random.Random().randint(2, 7)
    out = tmp_path / "run"
    _finish(_run(tmp_path, out, "kill-in-save", k), expect_rc=-9)
    assert (out / f".checkpoint-{k}.tmp").is_dir() and not (out / f"checkpoint-{k}").exists()
    _finish(_run(tmp_path, out, "resume"))
    assert not (out / f".checkpoint-{k}.tmp").exists()  # the stale temp dir is cleaned up
    _assert_same_run(reference, out)


def test_aha_train_resume_cli(tmp_path, monkeypatch, capsys):
    """`aha train RECIPE --resume`: a LoRA run whose process died after checkpoint-2 ends as the uninterrupted one."""
    from pathlib import Path

    from aha.cli import main
    from aha.train import checkpoint

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "smoltldr.yaml")
    sets = [
        "model={tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}",
        "dataset={task: arithmetic, n: 32}",
        "training.max_steps=4",
        "training.save_steps=1",
        "training.max_completion_length=8",
        "training.num_generations=4",
        "training.per_device_train_batch_size=8",
        "training.learning_rate=1e-2",
    ]
    argv = ["train", recipe, *[x for s in sets for x in ("--set", s)], "--no-plot", "--out"]
    assert main([*argv, str(tmp_path / "ref")]) == 0
    real = checkpoint.write_checkpoint

    def crash(output_dir, step, **parts):
        if step == 3:
            raise KeyboardInterrupt  # the process "dies" before checkpoint-3
        return real(output_dir, step, **parts)

    monkeypatch.setattr(checkpoint, "write_checkpoint", crash)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        main([*argv, str(out)])
    monkeypatch.setattr(checkpoint, "write_checkpoint", real)
    assert main([*argv, str(out)]) == 1  # without --resume: still refuses the non-empty directory
    assert "already holds files" in capsys.readouterr().err
    assert main([*argv, str(out), "--resume"]) == 0
    assert (out / "model" / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "ref" / "model" / "adapter_model.safetensors"),
        load_file(out / "model" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _lines(tmp_path / "ref") == _lines(out)
    assert main([*argv, str(tmp_path / "new"), "--resume", str(out / "checkpoint-9")]) == 1  # no such checkpoint
