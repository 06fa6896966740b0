"""Strict recipe loading: YAML -> typed dataclasses, then ``a.b=value`` overrides, then validation.

A recipe is a delta over the dataclass defaults. Unknown keys fail with the dotted key named and the closest
valid key suggested; values are type-checked against the dataclass annotations. YAML is read with
:class:`RecipeLoader`: numbers as YAML 1.2 reads them (``1e-3`` is a float, not a string) and a key given twice
in one mapping is an error (PyYAML would keep the last one silently). The resolved config is a plain
dataclass tree that ``to_dict`` turns back into YAML-able data (saved in every run directory and checkpoint).

Composition: a recipe may name ``base: OTHER`` and override it (:func:`read_yaml`). ``OTHER`` ending in ``.yaml`` /
``.yml`` is a path, relative to the recipe's directory unless absolute; anything else is a recipe name, looked up by
the ``find_recipe`` callable the caller passes (the shipped recipes: :mod:`unimim.app.recipes`). The recipe is merged
over its base (:func:`merge_recipes`): mappings key by key, recursively; any other value, a list included, replaces
the base's. A base may have a base (a chain); a cycle is an error. ``base`` is gone from the merged result.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats (an exponent without a dot, ``1e-3``, is a number) that refuses
    duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A PyYAML error as one line: what is wrong and where (line, column)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML ``text`` with :class:`RecipeLoader`; errors are one :class:`ConfigError` line naming ``what``."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as e:  # a duplicate key, an unknown tag
        raise ConfigError(f"{what}: {yaml_error_line(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {yaml_error_line(e)}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (recursing into dataclasses, lists, tuples, dicts)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for section {_type_name(tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}" + (f" ({errors[0]})" if errors else ""))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{extra}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.5)
            prefix = f"{where}." if where else ""
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'.{hint} Valid keys here: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (tuples become lists) for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=100' -> (['train', 'steps'], 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), load_yaml(raw, f"override {text!r}") if raw != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in the raw recipe dict (creating sections as needed); schema checks happen later."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = node[part]
        node[path[-1]] = value
    return raw


BASE_KEY = "base"


def merge_recipes(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: a mapping in both merges key by key (recursively); any other value, a list
    included, replaces the base's. Neither input is modified."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = value
    return out


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from None
    data = load_yaml(text, f"recipe {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    return data


def _base_path(ref: Any, path: Path, find_recipe: Callable[[str], Path] | None) -> Path:
    """Where ``base: ref`` of recipe ``path`` points: a ``*.yaml`` path (relative to ``path``'s directory), or a
    recipe name resolved by ``find_recipe``."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"recipe {path}: base must be a recipe name or a path to a .yaml file, got {ref!r}")
    if ref.endswith((".yaml", ".yml")):
        base = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        if not base.is_file():
            raise ConfigError(f"recipe {path}: base {ref!r} not found ({base})")
        return base
    if find_recipe is None:
        raise ConfigError(f"recipe {path}: base {ref!r} is a recipe name, and no recipe catalogue is given here; "
                          "name a path ending in .yaml instead")
    try:
        return find_recipe(ref)
    except ConfigError as e:
        raise ConfigError(f"recipe {path}: base: {e}") from None


def read_yaml(path: str | Path, find_recipe: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """The raw mapping of recipe ``path``, merged over its ``base:`` chain (module docstring); ``find_recipe(name)``
    resolves a base given by name (None: bases must be paths)."""
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    current = Path(path)
    while True:
        key = current.resolve()
        if key in chain:
            cycle = " -> ".join(str(p) for p in [*chain[chain.index(key):], key])
            raise ConfigError(f"recipe base cycle: {cycle}")
        chain.append(key)
        data = _read_mapping(current)
        if BASE_KEY not in data:
            layers.append(data)
            break
        ref = data.pop(BASE_KEY)
        layers.append(data)
        current = _base_path(ref, current, find_recipe)
    merged: dict[str, Any] = {}
    for layer in reversed(layers):  # the deepest base first, the recipe itself last
        merged = merge_recipes(merged, layer)
    return merged


def load_config(
    raw: dict[str, Any], root_type_for: Callable[[dict[str, Any]], type[T]], overrides: list[str] | None = None
) -> T:
    """Apply ``overrides`` to ``raw`` and build the root dataclass chosen by ``root_type_for(raw)``."""
    raw = apply_overrides(dict(raw), list(overrides or []))
    return from_dict(root_type_for(raw), raw)
