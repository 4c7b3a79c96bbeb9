"""aha.settings: the one way every config dataclass is checked."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from aha.settings import check_types, coerce, from_dict, require, suggest, type_ok


@dataclass
class Demo:
    n: int = 1
    rate: float = 0.5
    name: str | None = None
    tags: list[str] | str = "a"

    def __post_init__(self) -> None:
        check_types(self)
        require(self, self.n >= 1, "n", "must be >= 1")


def test_types_are_checked_by_annotation_and_errors_name_class_and_field():
    assert Demo(n=2, rate=1, name=None, tags=["x"]).rate == 1  # an int is a float
    with pytest.raises(ValueError, match=r"Demo\.n must be int, got bool \(True\)"):
        Demo(n=True)
    with pytest.raises(ValueError, match=r"Demo\.tags must be list\[str\] \| str"):
        Demo(tags=[1])
    with pytest.raises(ValueError, match=r"Demo\.n: must be >= 1 \(got 0\)"):
        Demo(n=0)


def test_from_dict_refuses_unknown_keys_with_a_suggestion():
    assert from_dict(Demo, {"n": 3}).n == 3
    with pytest.raises(ValueError, match=r"Demo has no field 'nmae' \(did you mean 'name'\?\)"):
        from_dict(Demo, {"nmae": "x"})
    assert suggest("zzz", ["n", "rate"]) == ""


def test_yaml_float_strings_and_type_checks():
    assert coerce("1e-5", "float") == 1e-5 and coerce("1e-5", "str") == "1e-5"
    assert type_ok(None, "int | None") and not type_ok(None, "int")
    assert type_ok({"a": 1}, "dict") and not type_ok([1], "dict")
    assert type_ok(object(), "SomeClass")  # a type the checker does not know: left to the class


def test_every_config_class_checks_its_types_the_same_way():
    from aha.eval.evaluate import EvalConfig
    from aha.models.tiny import TinyConfig
    from aha.train.config import GRPOConfig
    from aha.train.sft import SFTConfig
    from aha.workflows.sampling import SampleConfig

    every = [(GRPOConfig, "num_generations"), (SFTConfig, "max_steps"), (TinyConfig, "hidden_size")]
    for cls, field in [*every, (EvalConfig, "n"), (SampleConfig, "n")]:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must be int, got str"):
            cls(**{field: "4"})
