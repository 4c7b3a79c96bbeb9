import io

import pytest
from rich.text import Text

import aha.cli.chat as chat
from aha import parse_reasoning
from aha.cli import main
from aha.models.tiny import build_tiny

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "m"
    build_tiny(path, **SIZES)
    return path


@pytest.fixture
def replies(monkeypatch):
    """Record the completion text of each turn."""
    seen = []
    original = chat.reply

    def recording(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(chat, "reply", recording)
    return seen


def test_chat_one_question(model_dir, capsys, replies):
    assert main(["chat", "--model", str(model_dir), "47+38", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert len(replies) == 1 and replies[0]
    assert parse_reasoning(replies[0]).answer in out


def test_chat_piped_loop(model_dir, capsys, monkeypatch, replies):
    monkeypatch.setattr("sys.stdin", io.StringIO("1+1\n\n2+2\nexit\n3+3\n"))
    argv = ["chat", "--model", str(model_dir), "--max-new-tokens", "8", "--system", "be brief", "--temperature", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(replies) == 2  # the blank line is skipped, "exit" ends the loop
    for text in replies:
        assert parse_reasoning(text).answer in out


def test_chat_missing_model(tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "nope"), "hi"]) == 1
    assert "nope: no such directory (and not a Hub id)" in capsys.readouterr().err


class _Recorder:
    def __init__(self):
        self.parts = []

    def print(self, obj="", end="\n", soft_wrap=False):
        if isinstance(obj, Text):
            self.parts.append((obj.plain, str(obj.style) == "dim"))


def test_printer_dims_the_thought_across_split_tags():
    rec = _Recorder()
    printer = chat.ReasoningPrinter(rec)
    for chunk in ["<thi", "nk>7+8=15", " carry</th", "ink><ans", "wer>85</answer>", " <b>x"]:
        printer.feed(chunk)
    printer.finish()
    assert "".join(p for p, _ in rec.parts) == printer.text
    dim = "".join(p for p, d in rec.parts if d)
    plain = "".join(p for p, d in rec.parts if not d)
    assert "7+8=15 carry" in dim and "85" in plain and "<b>x" in plain and "85" not in dim


def test_printer_prefilled_thought():
    rec = _Recorder()
    printer = chat.ReasoningPrinter(rec, in_thought=True)
    printer.feed("hmm</think>42")
    printer.finish()
    assert ("hmm", True) in rec.parts and ("42", False) in rec.parts


def test_chat_loads_a_lora_adapter_on_its_base(model_dir, tmp_path, capsys, replies):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from aha.models.loading import peft_model

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert main(["chat", "--model", str(tmp_path / "adapter"), "hi", "--max-new-tokens", "5"]) == 0
    assert parse_reasoning(replies[0]).answer in capsys.readouterr().out


def test_chat_bad_sampling_options(model_dir, capsys):
    assert main(["chat", "--model", str(model_dir), "hi", "--top-p", "0"]) == 1
    assert "--top-p must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(["chat", "--model", str(model_dir), "hi", "--temperature", "-1"]) == 1
    assert "--temperature must be >= 0" in capsys.readouterr().err


def test_chat_samples_with_aha_sampler(model_dir, capsys, monkeypatch, replies):
    """One streamed call of aha's sampler (fast backend) per turn, on the chat messages; its text is the reply,
    and it is the same draw as the batch path (generate_texts with batch 1 and the turn's seed)."""
    import aha.rollout.engine
    from aha.models.loading import load_model
    from aha.rollout.sampler import SamplingParams

    calls = []
    original = aha.rollout.engine.stream_completion

    def recording(model, tok, prompt, params, on_text, **kwargs):
        pieces = []

        def both(piece):
            pieces.append(piece)
            on_text(piece)

        out = original(model, tok, prompt, params, both, **kwargs)
        calls.append((list(prompt), params.max_new_tokens, params.temperature, kwargs.get("backend", "fast"), out[0]))
        calls[-1] += (pieces,)
        return out

    monkeypatch.setattr(aha.rollout.engine, "stream_completion", recording)
    argv = ["chat", "--model", str(model_dir), "47+38", "--max-new-tokens", "9", "--temperature", "0.9", "--seed", "3"]
    assert main(argv) == 0
    [(prompt, n, temp, backend, text, pieces)] = calls
    assert (prompt, n, temp, backend, [text]) == ([{"role": "user", "content": "47+38"}], 9, 0.9, "fast", replies)
    assert len(pieces) > 1 and "".join(pieces) == text  # printed piece by piece, as drawn
    model, tok = load_model(model_dir)
    params = SamplingParams(max_new_tokens=9, temperature=0.9, top_p=0.95)
    texts, _, _ = aha.rollout.engine.generate_texts(model.eval(), tok, [prompt], params, batch_size=1, seed=3)
    assert texts == [text]
