import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from aha.cli import main
from aha.models.loading import load_model
from aha.models.tiny import build_tiny
from aha.workflows.export import export_model

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
MESSAGES = [{"role": "user", "content": "47+38"}]

# Runs in a fresh interpreter where `import aha` fails: the export must need transformers only.
LOADER = """
import json, sys
sys.modules["aha"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
ids = tok.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, do_sample=False, max_new_tokens=12)
pipe = pipeline("text-generation", model=path)
gen = pipe(json.loads(sys.argv[2]), max_new_tokens=5, do_sample=False)
print(json.dumps({"tokens": out[0, ids["input_ids"].shape[1]:].tolist(), "eos": model.generation_config.eos_token_id,
                  "tok_eos": tok.eos_token_id, "pipe": gen[0]["generated_text"][-1]["content"]}))
"""


def _greedy(model, tok, n=12):
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=n)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_export_run_loads_without_aha(tmp_path):
    run = tmp_path / "run"
    model, tok = build_tiny(run / "model", **SIZES)
    (run / "config.yaml").write_text(yaml.safe_dump({"demo": {}}))
    out = export_model(run, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith(".bin") for n in names)
    res = subprocess.run(
        [sys.executable, "-c", LOADER, str(out), json.dumps(MESSAGES)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["tokens"] == _greedy(model, tok)
    assert got["eos"] == got["tok_eos"] == tok.eos_token_id
    assert isinstance(got["pipe"], str)


def _adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    build_tiny(tmp_path / "base", **SIZES)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)  # make sure the adapter changes the outputs
    peft_model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_merge_lora_equals_base_plus_adapter(tmp_path):
    adapter = _adapter(tmp_path)
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    with_adapter, tok = load_model(adapter)  # peft: base + adapter, tokenizer from the base
    base, _ = load_model(tmp_path / "base")
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a, b, c = (m(**ids).logits for m in (merged, with_adapter, base))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(b, c, atol=1e-3)  # the adapter is not a no-op
    assert _greedy(merged, tok) == _greedy(with_adapter, tok)
    # without --merge-lora an adapter stays an adapter
    export_model(adapter, tmp_path / "plain")
    assert (tmp_path / "plain" / "adapter_config.json").exists()


def test_export_errors(tmp_path, monkeypatch, capsys):
    build_tiny(tmp_path / "m", **SIZES)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--merge-lora"]) == 1
    assert "not a LoRA adapter" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is not a model directory that aha created: it holds x.txt"):
            export_model(tmp_path / "m", tmp_path / "full", overwrite=overwrite)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x.txt"]


def test_a_missing_run_is_no_such_directory_never_a_hub_id(tmp_path, monkeypatch, capsys):
    """The bug: `aha export runs/does_not_exist` was taken for a Hub id (10 network retries, then "couldn't
    connect")."""
    monkeypatch.chdir(tmp_path)
    for runs in (False, True):  # with or without a runs/ folder here
        if runs:
            (tmp_path / "runs").mkdir()
        assert main(["export", "runs/does_not_exist", "--out", "o"]) == 1
        assert capsys.readouterr().err == "aha export: error: runs/does_not_exist: no such directory\n"
    assert not (tmp_path / "o").exists()


def test_overwrite_replaces_what_export_wrote_and_the_marker_is_not_pushed(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from aha.workflows.rundir import MARKER

    build_tiny(tmp_path / "m", **SIZES)
    out = export_model(tmp_path / "m", tmp_path / "o")
    written = json.loads((out / MARKER).read_text())["written"]
    assert "config.json" in written and "README.md" in written and MARKER not in written
    (out / "my-notes.txt").write_text("mine")
    export_model(tmp_path / "m", out, overwrite=True)
    assert (out / "my-notes.txt").read_text() == "mine" and (out / "config.json").is_file()
    assert "kept 1 entry" in capsys.readouterr().err
    seen = {}

    class Api:
        def __init__(self, token):
            pass

        def create_repo(self, *a, **k):
            pass

        def upload_folder(self, **kw):
            seen.update(kw)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: type("C", (), {"close": lambda self: None})())
    from aha.workflows.export import push_folder

    push_folder(out, "me/tiny", "token")
    assert seen["ignore_patterns"] == [MARKER]


def test_push_fails_clearly_offline_or_logged_out(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    build_tiny(tmp_path / "m", **SIZES)
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--push-to-hub", "me/tiny"]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # checked before any work
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--push-to-hub", "me/tiny"]) == 1
    assert "not logged in" in capsys.readouterr().err


def _gguf_greedy(path, tok, n=12):
    """Greedy tokens of a .gguf file as transformers' own GGUF loader reads it."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return _greedy(model, tok, n)


@pytest.mark.parametrize("kind, dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_export_gguf_round_trips_through_transformers_loader(tmp_path, kind, dtype):
    """aha export --gguf: transformers reads the file back; its greedy tokens are the exported model's (with its
    matrices rounded to the file's type, as llama.cpp computes with them); the tokenizer and template come along."""
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    build_tiny(tmp_path / "m", **SIZES)
    out = tmp_path / "tiny.gguf"
    assert main(["export", str(tmp_path / "m"), "--out", str(out), "--gguf", kind]) == 0
    model, tok = load_model(tmp_path / "m")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(p.to(dtype).float())
    tok2 = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert tok2.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES, tokenize=False)
    assert _gguf_greedy(out, tok) == _greedy(model, tok)


def test_export_gguf_merges_an_adapter_and_refuses_bad_requests(tmp_path, capsys):
    pytest.importorskip("gguf")
    adapter = _adapter(tmp_path)
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged.gguf"), "--gguf", "f32"]) == 0
    with_adapter, tok = load_model(adapter)
    assert _gguf_greedy(tmp_path / "merged.gguf", tok) == _greedy(with_adapter, tok)
    capsys.readouterr()
    assert main(["export", str(adapter), "--out", str(tmp_path / "x.gguf"), "--gguf", "f32", "--merge-lora"]) == 1
    assert "always merges" in capsys.readouterr().err
    assert main(["export", str(adapter), "--out", str(tmp_path / "dir"), "--gguf", "f16"]) == 1
    assert "ending in .gguf" in capsys.readouterr().err
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged.gguf"), "--gguf", "f16"]) == 1
    assert "merged.gguf" in capsys.readouterr().err  # an existing file is not replaced without --overwrite
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged.gguf"), "--gguf", "f16", "--overwrite"]) == 0
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "dir").exists()


def test_export_gguf_pushes_the_file(tmp_path, monkeypatch):
    """--push-to-hub with --gguf uploads the one file (the Hub calls intercepted: no network here)."""
    pytest.importorskip("gguf")
    import huggingface_hub

    import aha.workflows.export as export

    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id))

        def upload_file(self, **kw):
            calls.append(("file", kw["path_in_repo"], kw["repo_id"]))

        def upload_folder(self, **kw):
            raise AssertionError("a GGUF export is one file")

    monkeypatch.setattr(export, "check_push", lambda repo: "tok")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(export.socket, "create_connection", lambda *a, **k: type("C", (), {"close": lambda s: 0})())
    build_tiny(tmp_path / "m", **SIZES)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "t.gguf"), "--gguf", "q8_0",
                 "--push-to-hub", "me/tiny-gguf"]) == 0  # fmt: skip
    assert calls == [("token", "tok"), ("create", "me/tiny-gguf"), ("file", "t.gguf", "me/tiny-gguf")]
