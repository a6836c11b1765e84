"""core/config_fields.py: one field helper and one validator for every config dataclass."""
from __future__ import annotations

import dataclasses
import math

import pytest

from core.config_fields import ConfigError, ConfigTypeError, rule_text, setting, validate


@dataclasses.dataclass(frozen=True)
class Demo:
    share: float = setting(0.5, "A share.", ge=0, le=1)
    count: int = setting(3, "A count.", ge=1)
    eps: float = setting(0.2, "Open bounds.", gt=0, lt=1)
    mode: str = setting("a", "A choice.", choices=("a", "b"))
    flag: bool = setting(True, "A flag.")
    words: tuple[str, ...] = setting((), "Some words.")
    url: str | None = setting(None, "Optional.")
    cap: float = setting(math.inf, "May be infinite.", finite=False)

    def __post_init__(self):
        validate(self)


def test_defaults_pass_and_values_are_normalized():
    d = Demo(share=1, words=["x", "y"])
    assert d.share == 1.0 and isinstance(d.share, float) and d.words == ("x", "y") and d.cap == math.inf


@pytest.mark.parametrize("kwargs, message", [
    ({"share": 1.5}, "Demo.share must be a finite number in [0, 1]; got 1.5"),
    ({"share": math.nan}, "Demo.share must be a finite number in [0, 1]; got nan"),
    ({"count": 0}, "Demo.count must be an integer >= 1; got 0"),
    ({"eps": 1.0}, "Demo.eps must be a finite number in (0, 1); got 1.0"),
    ({"mode": "c"}, "Demo.mode must be one of 'a', 'b'; got 'c'"),
    ({"cap": math.nan}, "Demo.cap must be a number; got nan"),
])
def test_a_bad_value_names_the_field_the_value_and_the_rule(kwargs, message):
    with pytest.raises(ConfigError) as err:
        Demo(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs", [{"share": True}, {"share": "0.5"}, {"count": 2.5}, {"count": True},
                                    {"flag": 1}, {"words": "x"}, {"words": ["x", ""]}])
def test_a_wrong_type_is_also_a_type_error(kwargs):
    with pytest.raises(ConfigTypeError) as err:
        Demo(**kwargs)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


def test_error_class_and_source_can_be_named():
    class MyError(ConfigError):
        pass

    @dataclasses.dataclass(frozen=True)
    class Env:
        port: int = setting(80, "Port.", ge=1, le=65535)

        def __post_init__(self):
            validate(self, error=MyError, where=lambda name: "APP_" + name.upper())

    with pytest.raises(MyError, match=r"Env.port must be an integer in \[1, 65535\]; got 0 \(APP_PORT\)"):
        Env(port=0)
    with pytest.raises(MyError, match="APP_PORT"):
        Env(port="80")


def test_every_setting_needs_a_help_and_its_rules_read_as_words():
    with pytest.raises(ValueError, match="help"):
        setting(1, "")
    rules = {f.name: rule_text(f) for f in dataclasses.fields(Demo)}
    assert rules["count"] == "an integer >= 1" and rules["mode"] == "one of 'a', 'b'" and rules["flag"] == ""
