"""Config dataclasses with a strict YAML round trip and named presets.

Every model config subclasses :class:`ConfigBase`. Unknown keys are an error
(never silently dropped), so a config written by one version and read by
another fails loudly instead of building a different model.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Type, TypeVar

import yaml

C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A config that cannot describe a valid model (unknown key, bad value)."""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn YAML data back into the annotated type (tuples, nested configs)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return tp.from_dict(value)
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(value)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
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
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:  # e.g. a required field missing
            raise ConfigError(f"{cls.__name__}: {e}") from None

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
        p = Path(path_or_text)
        text = p.read_text() if ("\n" not in str(path_or_text) and p.exists()) else str(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path_or_text}: not valid YAML ({e})") from None
        return cls.from_dict(data or {})

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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["ConfigBase", "ConfigError", "atomic_write_text", "deep_merge"]
