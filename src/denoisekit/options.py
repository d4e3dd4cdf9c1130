"""Typed options: YAML and command-line values coerced to declared types, and registry entries built
from their own config dataclass or signature. Errors name the key and the expected type."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml


# ---------------------------------------------------------------------------------------------
# Types: coercion of YAML / command-line values to declared field types


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # unresolvable annotations: treat as untyped
        return {}


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if tp is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to type ``tp`` (int -> float, list -> tuple, "1e-4" -> float, ...), or a
    ``ValueError`` naming ``key``, the expected type and, for a ``Literal``, the allowed values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail() -> ValueError:
        return ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    if tp is Any or tp is object:
        return value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/yes/off/on as a boolean
            value = next((w for w in (("yes", "on", "true") if value else ("no", "off", "false")) if w in args), value)
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ValueError(f"{key}: unknown value {value!r}; allowed: {', '.join(str(a) for a in args)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(value, a, key)
                except ValueError:
                    pass
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
            items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise fail()
    return value


def _accepts_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp))


def parse_value(text: str, tp: Any, key: str) -> Any:
    """A command-line string converted to ``tp``: read as YAML (``64``, ``[1, 2]``, ``true``), then coerced;
    ``none``/``null`` for an optional key."""
    if _accepts_none(tp) and text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = text
    try:
        return coerce(loaded, tp, key)
    except ValueError as first:
        if loaded != text:
            try:
                return coerce(text, tp, key)
            except ValueError:
                pass
        raise first from None


# ---------------------------------------------------------------------------------------------
# Component options: typed by the registry entry's own config dataclass or signature


def option_schema(entry: Any) -> tuple[dict[str, Any], bool, type | None]:
    """``(types, open, config_class)`` of a registry entry's options.

    ``types`` maps each option to its declared type, ``open`` says whether other keys are accepted
    (``**kwargs``), ``config_class`` is the entry's config dataclass (``config_class`` or ``Config``).
    """
    for attr in ("config_class", "Config"):
        cls = getattr(entry, attr, None)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            hints = _hints(cls)
            return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}, False, cls
    try:
        sig = inspect.signature(entry)
    except (TypeError, ValueError):
        return {}, True, None
    hints = _hints(entry.__init__ if inspect.isclass(entry) else entry)
    schema, is_open = {}, False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            is_open = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            schema[p.name] = hints.get(p.name, Any)
    return schema, is_open, None


def build_entry(entry: Any, options: Mapping[str, Any]) -> Any:
    """Instantiate a registry entry: ``entry(config_class(**options))`` or ``entry(**options)``."""
    _, _, cls = option_schema(entry)
    return entry(cls(**options)) if cls is not None else entry(**options)
