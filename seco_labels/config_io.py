"""Config values in and out: YAML/JSON config files read into mappings, YAML/CLI values converted to a field's
declared type, and a resolved config written out as a plain dict or YAML.

What the values mean, the presets and the layering of mappings and ``--set`` overrides onto a config are
:mod:`seco_labels.config`.
"""

from __future__ import annotations

import functools
import json
import os
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import SecoConfig

__all__ = ["load_config_file", "config_to_dict", "save_config", "coerce", "field_types", "check_choices", "either"]


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {p} could not be parsed: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def config_to_dict(cfg: SecoConfig) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML, JSON and ``torch.save``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(asdict(cfg))


def save_config(cfg: SecoConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def get_key(cfg: Any, key: str) -> Any:
    """The value of dotted ``key`` (``loss.lig.start``) in a config object."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set dotted ``key`` of a config object to ``value`` as it is (no conversion: a value the config held)."""
    *path, name = key.split(".")
    setattr(get_key(cfg, ".".join(path)) if path else cfg, name, value)


def recorded_value(config: dict[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in a config mapping (a checkpoint's), None where it has none."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass (``from __future__ import annotations`` leaves strings)."""
    return typing.get_type_hints(cls)


def _type_name(target: Any) -> str:
    return target.__name__ if isinstance(target, type) else str(target)


def either(values: Any) -> str:
    """``a, b or c`` for a message."""
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} or {text[-1]}"


def _optional(target: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other type -> ``(type, False)``."""
    args = [a for a in typing.get_args(target) if a is not type(None)]
    if typing.get_origin(target) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0], True
    return target, False


def _choices(target: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` field type, None for any other type."""
    return typing.get_args(target) if typing.get_origin(target) is typing.Literal else None


def _choice(value: Any, allowed: tuple[Any, ...], key: str) -> Any:
    """``value`` if it is one of ``allowed`` (a ``Literal``'s values).

    Raises:
        ConfigError: naming ``key``, the value and the choices.
    """
    if isinstance(value, bool) and ("on" if value else "off") in allowed:
        value = "on" if value else "off"  # YAML 1.1 reads a bare off (no, false) as False: `amp: off` means "off"
    for a in allowed:
        if type(value) is type(a) and value == a:  # type first: True == 1 and 1.0 == 1 are other values
            return a
    raise ConfigError(f"{key}={value!r}: choose {either(allowed)}")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Check every ``Literal`` field of a config dataclass, its sections and their tuples of choices (values set in
    code, which :func:`coerce` never saw); ``prefix`` starts the keys named (``"train."``, ``"ExportOptions."``).

    Raises:
        ConfigError: the first value that is not one of its field's choices (see :func:`coerce`).
    """
    hints = field_types(type(obj))
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            check_choices(value, f"{key}.")
            continue
        target, optional = _optional(hints[f.name])
        if value is None and optional:
            continue
        allowed = _choices(target)
        if allowed is not None:
            _choice(value, allowed, key)
        elif typing.get_origin(target) is tuple and isinstance(value, (tuple, list)):
            inner = typing.get_args(target)
            allowed = _choices(inner[0]) if inner else None
            for v in value if allowed is not None else ():
                _choice(v, allowed, key)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    return bool(value)


def _parse_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _parse_dict(value: Any) -> dict:
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ValueError(value)
    return dict(value)


#: how a YAML/CLI value becomes a field's scalar type
_PARSERS: dict[Any, Callable[[Any], Any]] = {bool: _parse_bool, int: _parse_int, float: float, dict: _parse_dict,
                                             str: str}


def coerce(value: Any, target: Any, key: str) -> Any:
    """Convert a YAML/CLI value to a dataclass field's declared type: scalars, ``X | None``, ``tuple[T, ...]``,
    ``tuple[T, T]`` (a string ``"0.5,2"`` or ``"(0.5, 2)"`` too), ``dict``, and ``Literal[...]`` choices (alone or
    as the items of a tuple), which must be one of their values.

    Raises:
        ConfigError: the value does not convert, naming ``key`` and the type; or it is none of a ``Literal``'s
            choices, naming ``key``, the value and the choices.
    """
    target, optional = _optional(target)
    if value is None:
        if not optional and _choices(target) is not None:
            _choice(value, _choices(target), key)
        return None
    allowed = _choices(target)
    if allowed is not None:
        return _choice(value, allowed, key)
    origin = typing.get_origin(target) or target
    args = list(typing.get_args(target))
    try:
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            inner_type = args[0] if args else str
            items = [v.strip() if isinstance(v, str) else v for v in value]
            if _choices(inner_type) is not None:
                return tuple(_choice(v, _choices(inner_type), key) for v in items)
            inner = _PARSERS.get(inner_type, str)
            return tuple(inner(v) for v in items)
        if origin in _PARSERS:
            return _PARSERS[origin](value)
    except ConfigError:  # a ValueError too: an item that is none of its choices says so itself
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {_type_name(target)}") from None
    return value
