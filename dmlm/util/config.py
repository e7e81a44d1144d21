"""Typed configuration: dataclasses are the config; YAML files and `a.b=value` overrides fill them.

Design decisions:
- Every stage's settings are a dataclass with defaults and a docstring per field (the help
  text); there are no dotted-string component lookups that fail only at run time: an unknown
  key or a value of the wrong type is an error naming the key.
- The resolved config is saved beside every checkpoint and report.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from dmlm.util.errors import UserError


class ConfigError(UserError):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else value.split(",")
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # e.g. an item of a list of dataclasses
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _fill(tp(), value, f"{key}.")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    return value


def _fill(obj: Any, values: dict, prefix: str = "") -> Any:
    """`obj` with `values` set (nested dataclasses filled in place); a frozen dataclass (e.g.
    DecodingOptions) comes back as a new, validated instance."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known: {', '.join(sorted(prefix + n for n in names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping")
            changes[key] = _fill(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    if not type(obj).__dataclass_params__.frozen:
        for key, value in changes.items():
            setattr(obj, key, value)
        return obj
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as e:
        raise ConfigError(f"{prefix.rstrip('.') or type(obj).__name__}: {e}") from None


EXTENDS = "extends"
"""A config file's top-level key naming the file it is a variant of (relative to its own folder):
that file is read first, then this one's keys replace its values (nested sections key by key,
lists whole). A preset that differs from another in a few sizes says only those."""


def load_config(path: str | Path | None, overrides: list[str], cls: type) -> Any:
    """A `cls` from defaults, then the YAML file (after the file it `extends`), then `a.b=value` overrides."""
    cfg = cls()
    if path:
        for file, values in _config_chain(Path(path)):
            try:
                cfg = _fill(cfg, values)
            except ConfigError as e:  # a key or value of a file: name the file it is in
                raise ConfigError(f"{file}: {e}") from None
    return apply_overrides(cfg, overrides)


def _config_chain(path: Path) -> list[tuple[Path, dict]]:
    """(file, YAML mapping) of `path` and the files it extends, the furthest base first."""
    chain: list[tuple[Path, dict]] = []
    seen: list[Path] = []
    while True:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found" + (f" (extended by {seen[-1]})" if seen else ""))
        if path.resolve() in seen:
            raise ConfigError(f"{path}: `{EXTENDS}` loops back to a file already read ({' -> '.join(map(str, seen))})")
        seen.append(path.resolve())
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top")
        base = values.pop(EXTENDS, None)
        chain.insert(0, (path, values))
        if base is None:
            return chain
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: `{EXTENDS}` must name a config file, got {base!r}")
        path = path.parent / base


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """`cfg` (a dataclass) with `a.b=value` overrides applied; values are YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r}: {key!r} is not a key (expected key.sub=value, e.g. train.steps=100)")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        try:
            cur[parts[-1]] = yaml.safe_load(value) if value else value
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None
        cfg = _fill(cfg, nested)
    return cfg


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the help text of its CLI flag)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # fields a dataclass inherits are documented in its bases
        if not dataclasses.is_dataclass(base):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(base))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def _field(cls: type, key: str) -> dataclasses.Field:
    """The field of `cls` a dotted override key names (`train.steps`); a ConfigError for any other key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    head, _, rest = key.partition(".")
    if head not in fields:
        raise ConfigError(f"unknown config key {key!r} of {cls.__name__}; known: {', '.join(sorted(fields))}")
    if not rest:
        return fields[head]
    inner = typing.get_type_hints(cls)[head]
    if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
        raise ConfigError(f"{head} of {cls.__name__} has no keys inside it (asked for {key!r})")
    return _field(inner, rest)


def field_default(cls: type, key: str) -> Any:
    """The default of the field a dotted override key names (a ConfigError for a key that is no field)."""
    f = _field(cls, key)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _yaml_value(value: Any) -> str:
    """A value as an override writes it (YAML, one line)."""
    if dataclasses.is_dataclass(value):
        value = asdict(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def override_help(cls: type, keys: list[str], intro: str = "") -> str:
    """The help of a verb's `key=value` overrides: `intro`, then `key=default` for each of `keys`, each
    checked to be a real field of `cls` (so the help cannot advertise a key that does not exist)."""
    shown = " ".join(f"{k}={_yaml_value(field_default(cls, k))}" for k in keys)
    return f"{intro}{' ' if intro else ''}{shown}" if keys else intro


def fields_help(cls: type, prefix: str = "") -> str:
    """Every field of `cls` (nested dataclasses under `prefix.`), its default and its docstring: a verb's epilog."""
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = field_default(cls, f.name)
        if dataclasses.is_dataclass(default):
            lines.append(fields_help(type(default), f"{prefix}{f.name}."))
            continue
        lines.append(f"  {prefix}{f.name}={_yaml_value(default)}\n      {docs.get(f.name, '')}".rstrip())
    return "\n".join(lines)
