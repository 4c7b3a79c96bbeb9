"""BUILTIN_TOOLS and resolve_tools: a recipe's tools entries (built-in names, callables, file.py:fn, module:fn)
turned into callables, each checked, every bad entry one error naming it."""

from __future__ import annotations

import pytest

from aha.tools import BUILTIN_TOOLS, Toolbox, ToolCall, calculator, python, resolve_tools, tool_schema

USER_TOOLS = '''
def shout(text: str) -> str:
    """Shout a text.

    Args:
        text: what to shout
    """
    return text.upper() + "!"


def bare(x: int) -> int:
    return x
'''


@pytest.fixture
def recipe_dir(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "mine.py").write_text(USER_TOOLS)
    return tmp_path


def test_builtin_tools():
    assert list(BUILTIN_TOOLS) == ["calculator", "python"]
    assert BUILTIN_TOOLS["calculator"]() is calculator
    made = BUILTIN_TOOLS["python"]()
    assert made.__name__ == "python" and made is not python and tool_schema(made) == tool_schema(python)


def test_resolve_names_callables_and_files(recipe_dir):
    def double(x: int) -> int:
        """Double it.

        Args:
            x: a number
        """
        return 2 * x

    tools = resolve_tools(["calculator", double, "tools/mine.py:shout", "python"], base_dir=recipe_dir)
    assert [t.__name__ for t in tools] == ["calculator", "double", "shout", "python"]
    assert tools[0] is calculator and tools[1] is double
    box = Toolbox(tools)
    assert box.call(ToolCall("shout", {"text": "hi"})).content == "HI!"
    assert box.call(ToolCall("calculator", {"expression": "2*21"})).content == "42"
    assert resolve_tools([f"{recipe_dir / 'tools' / 'mine.py'}:shout"])[0].__name__ == "shout"  # absolute: no base
    assert resolve_tools([]) == []


def test_resolve_module_function(recipe_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(recipe_dir / "tools"))
    assert resolve_tools(["mine:shout"])[0]("a") == "A!"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("calculater", "unknown tool 'calculater': the built-in tools are calculator, python; a function of your own is 'path/to/file.py:function'"),
        (3, "unknown tool 3"),
        ("tools/nope.py:shout", "custom tool 'tools/nope.py:shout': no file"),
        ("tools/mine.py:missing", "custom tool 'tools/mine.py:missing': 'tools/mine.py' has no attribute 'missing'"),
        ("tools/mine.py:bare", "tool 'tools/mine.py:bare': tool .*bare cannot be described to the model: .*no docstring"),
    ],
)  # fmt: skip
def test_resolve_errors_name_the_entry(recipe_dir, spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_tools([spec], base_dir=recipe_dir)


def test_resolve_wants_a_list():
    with pytest.raises(ValueError, match="tools must be a list"):
        resolve_tools("calculator")
