"""Config dataclasses with a strict YAML round trip and named presets.

Every model config subclasses :class:`ConfigBase`. Unknown keys are an error
(never silently dropped), so a config written by one version and read by
another fails loudly instead of building a different model.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Type, TypeVar

import yaml

from .errors import VGSError
from .io import atomic_write_text  # noqa: F401 -- re-exported: the old import path

C = TypeVar("C", bound="ConfigBase")


class ConfigError(VGSError, ValueError):
    """A config that cannot describe a valid model (unknown key, bad value)."""


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn YAML data back into the annotated type (tuples, nested configs), checking every type.

    A wrong type is a ConfigError naming the field, never a TypeError deep in a
    model's constructor. ``bool`` is not an integer here, and numbers must be finite.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if tp is Any or tp is None:
        return value
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_type_name(value)}")
        return tp.from_dict(value)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_type_name(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_type_name(value)}")
        return dict(value)
    if tp in _NAMES:
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{where}: expected {_NAMES[tp]}, got {_type_name(value)} {str(value)[:40]!r}")
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        return value
    return value


@dataclasses.dataclass
class ConfigBase:
    """Base for model configs: ``to_dict``/``from_dict``, YAML, presets.

    Subclasses fill ``PRESETS`` with ``{name: {field: value}}`` overrides of the
    dataclass defaults and validate themselves in ``__post_init__``.
    """

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def to_dict(self) -> Dict[str, Any]:
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: Type[C], data: Mapping[str, Any]) -> C:
        where = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_type_name(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:  # a required field missing, a bad value
            raise ConfigError(f"{where}: {' '.join(str(e).split())}") from None

    @classmethod
    def preset(cls: Type[C], name: str = "base", /, **overrides: Any) -> C:
        if name not in cls.PRESETS:
            raise ConfigError(f"{cls.__name__}: unknown preset {name!r}; choose from {sorted(cls.PRESETS)}")
        base = cls.from_dict(cls.PRESETS[name]).to_dict()
        return cls.from_dict(deep_merge(base, overrides))

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls: Type[C], path_or_text: str | os.PathLike) -> C:
        from .io import TextFileError, parse_yaml, read_text

        p = Path(path_or_text)
        is_file = "\n" not in str(path_or_text) and p.exists()
        where = str(p) if is_file else "config text"
        try:
            data = parse_yaml(read_text(p) if is_file else str(path_or_text), where)
        except TextFileError as e:
            raise ConfigError(str(e)) from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of config keys, got {_type_name(data)}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}: {message}")


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``overrides``, merging nested mappings key by key.

    So ``preset("tiny", audio={"pretrained": "dir"})`` changes one field of the
    nested audio config instead of replacing it.
    """
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, ConfigBase):
            v = v.to_dict()
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


__all__ = ["ConfigBase", "ConfigError", "atomic_write_text", "deep_merge"]
