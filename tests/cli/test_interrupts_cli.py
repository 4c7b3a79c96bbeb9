"""Ctrl-C and SIGTERM on a real ``python -m aha.cli train|sft`` process: it finishes the step, saves a checkpoint,
prints one line with the command that resumes it and exits 130/143; that command ends bit-identical to a run that
was never interrupted. (A second signal, which stops at once, is pinned down in-process in
tests/train/test_interrupts.py, where it can be made to land in the middle of a save.)

Only the interrupted run is a process of its own (at one thread); the reference and the resumed runs go through
:func:`aha.cli.main` in this process, at one thread too, which computes bit for bit as the subprocess does."""

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aha.train import checkpoint

SMALL = "{tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}"
STEPS = 10
RECIPES = {
    "train": f"""
trainer: grpo
model: {SMALL}
dataset: {{task: arithmetic, n: 32}}
rewards: [format, correctness]
training: {{max_steps: {STEPS}, save_steps: 100, logging_steps: 1, learning_rate: 1.0e-2, num_generations: 4,
  per_device_train_batch_size: 8, max_completion_length: 8, seed: 0, use_cpu: true}}
""",
    "sft": f"""
trainer: sft
model: {SMALL}
dataset: {{task: arithmetic, split: sft, n: 64}}
training: {{max_steps: {STEPS}, save_steps: 100, logging_steps: 1, learning_rate: 1.0e-2,
  per_device_train_batch_size: 8, seed: 0}}
""",
}
ENV = {
    **os.environ,
    "AHA_NO_PROGRESS": "1",
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "500",
    "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
}


def _command(tmp: Path, kind: str, out: Path, *extra: str) -> list[str]:
    recipe = tmp / f"{kind}.yaml"
    recipe.write_text(RECIPES[kind])
    return [sys.executable, "-m", "aha.cli", kind, str(recipe), "--out", str(out), "--no-plot", *extra]


def _steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(json.loads(x).get("phase") in ("grpo", "sft") for x in lines if x.endswith("}"))


def _interrupt(cmd: list[str], out: Path, k: int, signals: list[int]) -> subprocess.CompletedProcess:
    """Run `cmd`, wait until metrics.jsonl shows step `k`, send `signals` (10 ms apart)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _steps(out) < k and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    for s in signals:
        proc.send_signal(s)
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The in-process runs at one thread, as the subprocess; console lines unwrapped."""
    from aha.console import console

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(console, "soft_wrap", True)
    yield
    torch.set_num_threads(threads)


def _main(cmd: list[str]) -> int:
    """Run ``python -m aha.cli ARGS`` (`cmd`) in this process."""
    from aha.cli import main

    assert cmd[:3] == [sys.executable, "-m", "aha.cli"]
    return main(cmd[3:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs' final weights, by command."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(kind: str) -> dict[str, torch.Tensor]:
        if kind not in cache:
            tmp = tmp_path_factory.mktemp(f"ref-{kind}")
            assert _main(_command(tmp, kind, tmp / "run")) == 0
            cache[kind] = _weights(tmp / "run")
        return cache[kind]

    return get


@pytest.mark.parametrize(("kind", "sig"), [("train", signal.SIGINT), ("sft", signal.SIGTERM)])
def test_signal_saves_prints_the_resume_command_and_resumes_bit_identical(tmp_path, reference, capsys, kind, sig):
    k = random.Random(f"{kind}{sig}").randint(2, STEPS - 3)
    out = tmp_path / "run"
    cmd = _command(tmp_path, kind, out)
    done = _interrupt(cmd, out, k, [sig])
    assert done.returncode == 128 + sig, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    m = re.fullmatch(rf"aha {kind}: stopped by {sig.name} after step (\d+); saved (\S+); resume with: (.+)", last)
    assert m, last
    step = int(m.group(1))
    assert k <= step <= STEPS and Path(m.group(2)) == out / f"checkpoint-{step}"
    assert m.group(3) == shlex.join([*cmd, "--resume"])  # the command line as run, --resume added
    assert checkpoint.verify_checkpoint(out / f"checkpoint-{step}") is None
    assert not (out / "model").exists()  # stopped before the end of the run
    capsys.readouterr()
    assert _main(shlex.split(m.group(3))) == 0
    assert f"resumed from {out / f'checkpoint-{step}'} at step {step}" in capsys.readouterr().err
    ref, mine = reference(kind), _weights(out)
    assert ref.keys() == mine.keys() and all(torch.equal(ref[n], mine[n]) for n in ref)


def test_aha_resume_skips_a_damaged_checkpoint_and_refuses_when_none_is_intact(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = _command(tmp_path, "sft", out, "--set", "training.max_steps=3", "--set", "training.save_steps=1")
    assert _main(cmd) == 0
    (out / "model").rename(tmp_path / "model-done")  # as if it had died after its last checkpoint
    ckpt = out / "checkpoint-3" / "optimizer.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    capsys.readouterr()
    assert _main([*cmd, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-3'} is damaged (optimizer.pt has 100 bytes" in err
    assert f"resuming from {out / 'checkpoint-2'} instead" in err and "Traceback" not in err
    for name in ("model.safetensors", "rng_state.pt", "trainer_state.json"):
        for p in checkpoint.list_checkpoints(out):
            (p / name).write_text("garbage")
    assert _main([*cmd, "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"aha sft: error: cannot resume: no checkpoint in {out} is intact: ") and "\n" not in err
    assert "checkpoint-1 is damaged (model.safetensors has 7 bytes" in err and "--overwrite" in err


@pytest.mark.parametrize(
    ("command", "argv", "expected"),
    [
        ("train", ["train", "r.yaml", "--overwrite", "--out", "o"], "aha train r.yaml --out o --resume"),
        ("train", ["train", "r.yaml", "--resume", "o/checkpoint-3", "--out", "o"], "aha train r.yaml --out o --resume"),
        (
            "sft",
            ["sft", "r.yaml", "--resume=auto", "--set", "model={tiny: {}}"],
            "aha sft r.yaml --set 'model={tiny: {}}' --resume",
        ),
        ("sample", ["sample", "--over", "--out", "s.jsonl"], "aha sample --out s.jsonl --resume"),
        ("pipeline", ["pipeline", "p.yaml", "--overwrite", "--out", "d"], "aha pipeline p.yaml --out d"),
    ],
)
def test_the_resume_command_drops_overwrite_and_any_resume_value(command, argv, expected):
    from aha.cli import resume_command

    assert resume_command(command, argv) == expected
