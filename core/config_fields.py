"""One config style for every config dataclass (PEFT's fields with a help, TRL's checks).

    rank: int = setting(16, "LoRA rank r: size of the low-rank update.", ge=1)

    def __post_init__(self):
        validate(self)                    # type, finiteness, bounds, choices of every field
        if self.max_samples < self.min_samples:   # cross-field rules stay explicit, after it
            raise ConfigError(...)

`setting` keeps the default, the help (what `--help`, `doctor` and the docs print) and the rules
in the field's metadata; `validate` reads them, so a rule is written once, beside its field, and
every error reads the same: `Class.field must be <what is wanted>; got <value>`.

Types come from the annotation: bool must be a bool (a 1 from a typo is not true), int an int
(not a bool, not 2.5), float any finite number (stored as float), tuple[str, ...] a list of
non-empty strings (stored as a tuple). str, Path and nested dataclasses are not type-checked;
give a str `choices`. `X | None` also accepts None.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


class ConfigError(ValueError):
    """A config field holds a value it may not; the message names Class.field, value and rule."""


class ConfigTypeError(ConfigError, TypeError):
    """A config field holds a value of the wrong type (also a TypeError, as Python's own)."""


def setting(default: Any = dataclasses.MISSING, help: str = "", *, ge=None, gt=None, le=None, lt=None,
            choices: tuple | None = None, finite: bool = True, **metadata) -> Any:
    """A dataclass field with its help and its rules. ge/gt/le/lt: bounds (>=, >, <=, <);
    choices: the allowed values; finite: reject NaN and infinities (float fields).
    A mutable or dataclass default is copied per instance."""
    if not help.strip():
        raise ValueError("every config field needs a help text")
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "finite": finite, **metadata}
    if isinstance(default, (dict, list, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def validate(obj: Any, *, error: type[ConfigError] = ConfigError,
             where: Callable[[str], str] | None = None) -> None:
    """Check (and normalize: int -> float, list -> tuple) every field of the dataclass `obj` by its
    annotation and its `setting` rules. `error`: the class raised (a ConfigError subclass);
    `where(name)`: where the value came from, added to the message (e.g. an environment variable)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind, optional = _kind(f)
        if value is None and optional:
            continue
        try:
            typed = _typed(kind, value, f.metadata)
            _check_rules(kind, typed, f.metadata)
        except _Wrong as wrong:
            owner = _owner(type(obj), f.name)
            suffix = f" ({where(f.name)})" if where else ""
            klass = ConfigTypeError if wrong.is_type and error is ConfigError else error
            raise klass(f"{owner}.{f.name} must be {wrong.want}; got {value!r}{suffix}") from None
        object.__setattr__(obj, f.name, typed)


def rule_text(f: dataclasses.Field) -> str:
    """The field's rules in words ('an integer >= 1', "one of 'a', 'b'"), '' when it has none."""
    kind, _ = _kind(f)
    return _want(kind, f.metadata) if any(f.metadata.get(k) is not None for k in _BOUNDS + ("choices",)) else ""


_BOUNDS = ("ge", "gt", "le", "lt")
_NOUN = {"bool": "true or false", "int": "an integer", "float": "a number", "int | float": "a number",
         "tuple[str, ...]": "a list of non-empty strings"}


class _Wrong(Exception):
    def __init__(self, want: str, *, is_type: bool = False):
        super().__init__(want)
        self.want, self.is_type = want, is_type


def _kind(f: dataclasses.Field) -> tuple[str, bool]:
    t = f.type if isinstance(f.type, str) else f.type.__name__ if type(f.type) is type else str(f.type)
    optional = t.replace(" ", "").endswith("|None")
    return (t.rsplit("|", 1)[0].strip() if optional else t), optional


def _typed(kind: str, value: Any, meta) -> Any:
    finite = meta.get("finite", True)
    if kind == "bool" and not isinstance(value, bool):
        raise _Wrong("true or false", is_type=True)
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Wrong("an integer", is_type=True)
    if kind == "float":
        # bool is an int subclass; `weight = true` is a typo, not 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Wrong("a number", is_type=True)
        if finite and not math.isfinite(value):
            raise _Wrong(_want(kind, meta))
        return float(value)
    if kind == "int | float":  # a number kept as given (LoRA alpha 32 stays 32 in adapter_config.json)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Wrong("a number", is_type=True)
        if finite and not math.isfinite(value):
            raise _Wrong(_want(kind, meta))
        return value
    if kind == "tuple[str, ...]":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _Wrong("a list of strings", is_type=True)
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise _Wrong("a list of non-empty strings", is_type=True)
        return tuple(value)
    return value


def _check_rules(kind: str, value: Any, meta) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise _Wrong("one of " + ", ".join(map(repr, choices)))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ge, gt, le, lt = (meta.get(k) for k in _BOUNDS)
    if math.isnan(value) or (ge is not None and value < ge) or (gt is not None and value <= gt) \
            or (le is not None and value > le) or (lt is not None and value >= lt):
        raise _Wrong(_want(kind if kind in _NOUN else "float", meta))


def _want(kind: str, meta) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(repr, meta["choices"]))
    noun = _NOUN.get(kind, "a value")
    if kind in ("float", "int | float") and meta.get("finite", True):
        noun = "a finite number"
    ge, gt, le, lt = (meta.get(k) for k in _BOUNDS)
    low, high = (ge, "[") if ge is not None else (gt, "(") if gt is not None else (None, "")
    top, close = (le, "]") if le is not None else (lt, ")") if lt is not None else (None, "")
    if low is not None and top is not None:
        return f"{noun} in {high}{low:g}, {top:g}{close}"
    if low is not None:
        return f"{noun} {'>=' if ge is not None else '>'} {low:g}"
    if top is not None:
        return f"{noun} {'<=' if le is not None else '<'} {top:g}"
    return noun


def _owner(klass: type, name: str) -> str:
    """The class that declares the field (ServerSettings.port, not Settings.port)."""
    for k in klass.__mro__:
        if name in k.__dict__.get("__annotations__", {}):
            return k.__name__
    return klass.__name__
