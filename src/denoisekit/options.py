"""Typed options: YAML and command-line values coerced to declared types, registry entries built from their
own config dataclass or signature, and config files made of sections (one frozen dataclass each) with dotted
command-line overrides. Errors name the key and the expected type.

This module knows no particular run: a run schema (``train/config.py`` and the other recipes' configs) is a
mapping ``{section name: Section subclass}`` handed to :func:`sections_from_dict`, :func:`apply_overrides`
and :func:`key_type`."""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Types: coercion of YAML / command-line values to declared field types


def hints(obj: Any) -> dict[str, Any]:
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
            types_ = hints(cls)
            return {f.name: types_.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}, False, cls
    try:
        sig = inspect.signature(entry)
    except (TypeError, ValueError):
        return {}, True, None
    types_ = hints(entry.__init__ if inspect.isclass(entry) else entry)
    schema, is_open = {}, False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            is_open = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            schema[p.name] = types_.get(p.name, Any)
    return schema, is_open, None


def build_entry(entry: Any, options: Mapping[str, Any]) -> Any:
    """Instantiate a registry entry: ``entry(config_class(**options))`` or ``entry(**options)``."""
    _, _, cls = option_schema(entry)
    return entry(cls(**options)) if cls is not None else entry(**options)


# ---------------------------------------------------------------------------------------------
# Sections: one frozen dataclass per part of a config file


def unknown_key(key: str, level: str, valid: Sequence[str]) -> ValueError:
    return ValueError(f"unknown key {key!r}; valid keys at {level!r}: {', '.join(sorted(valid))}")


class Section:
    """Base of a config section: coerces every field to its declared type after construction, then runs
    ``_check``. A section with an ``options`` field names a registry entry (by ``name``, or the field in
    ``name_field``) whose own options it types (see :func:`option_schema`); :meth:`registry` says which."""

    _key: ClassVar[str] = ""
    name_field: ClassVar[str] = "name"

    @classmethod
    def registry(cls) -> tuple[str, Mapping[str, Any]]:
        """``(what an entry is called, the registry)``, for sections with ``options``."""
        raise NotImplementedError(f"section {cls._key!r} has options but no registry")

    @classmethod
    def entry(cls, name: str) -> Any:
        kind, registry = cls.registry()
        from ._utils import lookup

        try:
            return lookup(kind, registry, name)
        except ValueError as e:
            raise ValueError(f"{cls._key}.{cls.name_field}: {e}") from None

    def __post_init__(self) -> None:
        types_ = hints(type(self))
        fixed = [f.name for f in dataclasses.fields(self) if f.name != "options"]  # type: ignore[arg-type]
        for name in fixed:
            object.__setattr__(self, name, coerce(getattr(self, name), types_.get(name, Any), f"{self._key}.{name}"))
        if hasattr(self, "options"):
            if not isinstance(self.options, Mapping):
                raise ValueError(f"{self._key}: options must be a mapping, got {self.options!r}")
            schema, is_open, cls = option_schema(self.entry(getattr(self, self.name_field)))
            opts: dict[str, Any] = {}
            for k, v in self.options.items():
                if k in schema:
                    opts[k] = coerce(v, schema[k], f"{self._key}.{k}")
                elif is_open:
                    opts[k] = v
                else:
                    raise unknown_key(f"{self._key}.{k}", self._key, [*fixed, *schema])
            if cls is not None:
                try:
                    cls(**opts)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{self._key} ({getattr(self, self.name_field)}): {e}") from None
            object.__setattr__(self, "options", opts)
        self._check()

    def _check(self) -> None:
        pass

    def _require(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{self._key}.{name} must be {what}, got {getattr(self, name)!r}")


def plain(value: Any) -> Any:
    """Tuples to lists and mappings to dicts, recursively: what YAML and JSON write."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def section_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name != "options"]


def has_options(cls: type) -> bool:
    return any(f.name == "options" for f in dataclasses.fields(cls))


def section_to_dict(section: Any) -> dict[str, Any]:
    """A section in the file layout: its fields, then its options flattened beside them."""
    body = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section) if f.name != "options"}
    body.update(plain(getattr(section, "options", {})))
    return body


def section_from_dict(name: str, cls: type, body: Mapping[str, Any]) -> Any:
    """Section ``cls`` from its mapping in a file (keys not among its fields are its options)."""
    if not isinstance(body, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {body!r}")
    fixed = section_fields(cls)
    types_ = hints(cls)
    if has_options(cls):
        kwargs = {k: v for k, v in body.items() if k in fixed}
        kwargs["options"] = {k: v for k, v in body.items() if k not in fixed}
    else:
        unknown = [k for k in body if k not in fixed]
        if unknown:
            raise unknown_key(f"{name}.{unknown[0]}", name, fixed)
        kwargs = {k: coerce(v, types_.get(k, Any), f"{name}.{k}") for k, v in body.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(name) else f"{name}: {msg}") from None


def sections_from_dict(d: Mapping[str, Any], sections: Mapping[str, type]) -> dict[str, Any]:
    """Every section of schema ``sections`` built from file layout ``d`` (missing ones take defaults)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a mapping of sections ({', '.join(sections)}), got {type(d).__name__}")
    for key in d:
        if key not in sections:
            raise unknown_key(str(key), "<top level>", list(sections))
    return {name: section_from_dict(name, cls, d.get(name) or {}) for name, cls in sections.items()}


def check_sections(config: Any, sections: Mapping[str, type]) -> None:
    """Each attribute of a run config named in ``sections`` holds an instance of its section class."""
    for name, cls in sections.items():
        if not isinstance(getattr(config, name), cls):
            raise ValueError(f"{name}: expected a {cls.__name__}, got {type(getattr(config, name)).__name__}")


def key_type(d: Mapping[str, Any], section: str, key: str, sections: Mapping[str, type]) -> Any:
    """The declared type of ``section.key`` in raw config ``d`` (options follow the section's entry name)."""
    if section not in sections:
        raise unknown_key(section, "<top level>", list(sections))
    cls = sections[section]
    fixed = section_fields(cls)
    if key in fixed:
        return hints(cls).get(key, Any)
    if has_options(cls):
        body = d.get(section) or {}
        name_field = getattr(cls, "name_field", "name")
        name = body.get(name_field, next(f.default for f in dataclasses.fields(cls) if f.name == name_field))
        schema, is_open, _ = option_schema(cls.entry(name))  # type: ignore[attr-defined]
        if key in schema:
            return schema[key]
        if is_open:
            return Any
        raise unknown_key(f"{section}.{key}", section, [*fixed, *schema])
    raise unknown_key(f"{section}.{key}", section, fixed)


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str], sections: Mapping[str, type], *,
                    typed: Callable[[Mapping[str, Any], str, str], Any] | None = None) -> dict[str, Any]:
    """A copy of raw config ``d`` with ``"section.key=value"`` overrides applied, values typed per key by
    ``typed(raw, section, key)`` (default: :func:`key_type` over ``sections``), which raises for an unknown key."""
    typed = typed or (lambda raw, s, k: key_type(raw, s, k, sections))
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a mapping of sections ({', '.join(sections)}), got {type(d).__name__}")
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE (SECTION.KEY=VALUE, e.g. model.channels=64)")
        parts = key.split(".")
        if len(parts) != 2:
            if parts[0] not in sections:
                raise unknown_key(parts[0], "<top level>", list(sections))
            raise ValueError(f"override {key!r}: expected SECTION.KEY (e.g. model.channels=64); give a list or "
                             f"mapping value whole, e.g. model.channel_mult=[1,2,2]")
        section, name = parts
        if section not in sections:
            raise unknown_key(section, "<top level>", list(sections))
        value = parse_value(text.strip(), typed(out, section, name), key)
        body = out.get(section)
        out[section] = {**(body if isinstance(body, Mapping) else {}), name: value}
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists (``channel_mult: [1, 2, 2]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def to_yaml(d: Mapping[str, Any]) -> str:
    return yaml.dump(plain(d), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def yaml_error(path: str | os.PathLike[str], e: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: ``FILE:LINE:COLUMN: not valid YAML: problem (context at L:C)``."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None:
        context += f" at {cmark.line + 1}:{cmark.column + 1}"
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def check_not_file(path: str | os.PathLike[str] | None, key: str) -> None:
    """``ValueError`` when ``key``, which names a run directory, names an existing file instead."""
    if path is not None and os.path.isfile(path):
        raise ValueError(f"{key}: expected a run directory, got a file: {path}")


def read_config_file(path: str | os.PathLike[str], overrides: Sequence[str],
                     build: Callable[[Mapping[str, Any], Sequence[str]], T]) -> T:
    """``build(raw YAML mapping, overrides)`` for a config file; every error names the file (and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(yaml_error(path, e)) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    try:
        return build(raw if raw is not None else {}, overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
