import pytest

from aha.cli import main


def test_unknown_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--bogus", "1"])
    assert e.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_help_imports_no_heavy_library():
    """`aha --help` and `aha COMMAND --help` build every parser: none may import torch, transformers & co."""
    import subprocess
    import sys

    code = (
        "import sys; from aha.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'accelerate', 'aha.train', 'yaml', "
        "'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_eval_help_names_the_device_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "256 on a CPU, 512 on a GPU" in text and "16 on a CPU, 64 on a GPU" in text and "--dtype" in text
