"""Typed settings of the plug-ins (forgetting-mitigation strategies, loss-balancing methods).

A plug-in declares its settings as a small frozen dataclass, each field with its type, its default and a one-line
meaning (`setting`). `parse_settings` reads a cfg value into it; `check_settings` is the check it runs, also used
for the balancing methods, whose settings are their keyword arguments. An unknown key fails naming the closest valid
one, as unknown train keys do; a value of the wrong type fails naming the key, the type expected and the value.

The same declarations make the settings reference (`Entry`): `settings_entries` describes a dataclass's fields,
`described` any settings given as types, defaults and meanings, and `read_keys` the package's top-level keys, each
declared in cfg/default.yaml as ``key: default # (type) meaning``. ``yolo-unified help``, cfg/default.yaml's
comment lines under each key and docs/reference.md show them (tests/test_reference.py keeps the three in step).

This module is at the bottom of the import order (docs/architecture.md): it imports nothing of yolo_unified.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from difflib import get_close_matches
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")
KEY_LINE = re.compile(r"^(\w+):(.*?) # \((.+?)\) (.+)$")  # cfg/default.yaml: key: default # (type) meaning
SECTION_LINE = re.compile(r"^# (\S.*?) -{3,}$")  # cfg/default.yaml: # Title -----
SUB_KEY_PREFIX = "#   "  # cfg/default.yaml: the comment lines under a key that show its settings


@dataclasses.dataclass(frozen=True)
class Entry:
    """One key of the settings reference: its name, its type in words, its default and what it means."""

    key: str
    type: str
    default: Any
    meaning: str


def setting(default: Any, meaning: str) -> Any:
    """A field of a settings dataclass: its `default` (a list is copied for each instance) and what it means."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"meaning": meaning})
    return dataclasses.field(default=default, metadata={"meaning": meaning})


def type_name(hint: Any) -> str:
    """A type hint in words: ``float``, ``float or null``, ``one of 'l2', 'cosine'``, ``a list of ...``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list and args and get_origin(args[0]) is Literal:
        return "a list of values among " + ", ".join(repr(a) for a in get_args(args[0]))
    if origin is list:
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "a mapping"
    words = {float: "a number", int: "an integer", bool: "true or false", str: "a string", Any: "any value"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def conform(value: Any, hint: Any) -> Any:
    """`value` as a value of the type `hint` (an integer is a number; a bool is neither); TypeError otherwise."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
    elif origin in (Union, types.UnionType):
        for option in args:
            try:
                return None if option is type(None) and value is None else conform(value, option)
            except TypeError:
                continue
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [conform(v, args[0]) for v in value] if args else list(value)
    elif origin is dict:
        if isinstance(value, Mapping):
            return {conform(k, args[0]): conform(v, args[1]) for k, v in value.items()} if args else dict(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(hint, type) and isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise TypeError(f"not {type_name(hint)}")


def check_settings(
    owner: str,
    given: Mapping[str, Any],
    hints: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    meanings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`given` checked against the settings `hints` (name -> type hint) of `owner` (its key, for the messages), each
    value converted to its type; a ValueError for an unknown name (suggesting a close one and listing the settings
    with their `defaults`) or a value of another type (with the setting's meaning)."""
    if not isinstance(given, Mapping):
        raise ValueError(f"{owner}: settings are a mapping of names to values, got {given!r}")
    defaults, meanings = defaults or {}, meanings or {}
    listing = ", ".join(f"{n}={defaults[n]!r}" if n in defaults else n for n in hints) or "none"
    checked = {}
    for name, value in given.items():
        if name not in hints:
            close = get_close_matches(str(name), list(hints), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{owner}: unknown setting '{name}'{hint}; its settings and defaults: {listing}")
        try:
            checked[name] = conform(value, hints[name])
        except TypeError:
            what = f" ({meanings[name]})" if meanings.get(name) else ""
            must = f"must be {type_name(hints[name])}"
            raise ValueError(f"{owner}: setting '{name}'{what} {must}, got {value!r}") from None
    return checked


def parse_settings(cls: type[T], value: Any, owner: str, scalar: str | None = None) -> T:
    """The cfg `value` of `owner` as its settings dataclass `cls`: a mapping of settings (the others at their
    defaults), True for every default, or, for a plug-in set by one value (``clip_grad: 1.0``), the value of its
    setting `scalar`. Anything else, unknown names and values of another type fail naming `owner`."""
    hints, defaults, meanings = declared(cls)
    if value is True and scalar is None:
        return cls()
    if scalar is not None and not isinstance(value, Mapping):
        value = {scalar: value}
    if not isinstance(value, Mapping):
        example = f'{owner}="{{{next(iter(hints))}: ...}}"' if hints else f"{owner}=True"
        raise ValueError(f"{owner}={value!r}: give its settings as a mapping ({example}), or True for the defaults")
    return cls(**check_settings(owner, value, hints, defaults, meanings))


def declared(cls: type) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The settings a settings dataclass declares: their type hints, defaults and meanings, by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = {name: hint for name, hint in typing.get_type_hints(cls).items() if name in fields}
    meanings = {name: f.metadata.get("meaning", "") for name, f in fields.items()}
    defaults = {name: default_of(f) for name, f in fields.items() if default_of(f) is not dataclasses.MISSING}
    return hints, defaults, meanings


def default_of(f: dataclasses.Field) -> Any:
    """The default of a dataclass field (made by its factory, if it has one); ``dataclasses.MISSING`` without one."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def described(hints: Mapping[str, Any], defaults: Mapping[str, Any], meanings: Mapping[str, str]) -> list[Entry]:
    """The settings given by their type `hints` (name -> hint), `defaults` and `meanings`, as reference entries."""
    return [Entry(name, type_name(hint), defaults.get(name), meanings.get(name, "")) for name, hint in hints.items()]


def settings_entries(cls: type) -> list[Entry]:
    """The fields of a settings dataclass as reference entries, in declaration order."""
    return described(*declared(cls))


def read_keys(text: str) -> dict[str, list[Entry]]:
    """The top-level keys that cfg/default.yaml's `text` declares, by section (``# Title ---`` lines), each from its
    line ``key: default # (type) meaning``; a key line of another form fails naming it. `SUB_KEY_PREFIX` lines (the
    settings shown under a key) and other comments are skipped."""
    sections: dict[str, list[Entry]] = {"": []}
    title = ""
    for line in text.splitlines():
        if heading := SECTION_LINE.match(line):
            title = heading.group(1)
            sections[title] = []
        elif line and not line.startswith("#"):
            if not (match := KEY_LINE.match(line)):
                raise ValueError(f"cfg/default.yaml: '{line[:60]}' is not 'key: default # (type) meaning'")
            key, default, kind, meaning = match.groups()
            sections[title].append(Entry(key, kind, yaml.safe_load(default) if default.strip() else None, meaning))
    return {title: entries for title, entries in sections.items() if entries}


def yaml_value(value: Any) -> str:
    """`value` as it is written in a YAML file on one line: ``null``, ``true``, ``2.0``, ``[seg, det, cls]``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
