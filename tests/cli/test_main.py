import pytest

from aha.cli import main


def test_unknown_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--bogus", "1"])
    assert e.value.code == 2
    assert "--bogus" in capsys.readouterr().err
