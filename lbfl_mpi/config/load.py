"""Loading a configuration: TOML files, ``--set section.key=value`` overrides (typed as TOML values),
then validation (checks.py). Writing one back is :func:`~.fields.dump_toml` (``Config.to_toml``)."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from ..files import read_text
from .checks import validate
from .fields import TYPE_OK, TYPE_WORDS, ConfigError, field_type, shown
from .schema import Config, sections


def _coerce(key: str, value: Any, typ: str) -> Any:
    if not TYPE_OK[typ](value):
        raise ConfigError(f"{key}: expected {TYPE_WORDS.get(typ, typ)}, got {shown(value)}")
    if typ == "float":
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range
            raise ConfigError(f"{key}={shown(value)}: must be finite") from None
    return value


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    secs = sections()
    if section not in secs:
        raise ConfigError(f"unknown config section [{section}] (known: {', '.join(secs)})")
    sub = getattr(cfg, section)
    names = {f.name: f for f in dataclasses.fields(sub)}
    if key not in names:
        raise ConfigError(f"unknown config key {section}.{key} (known in [{section}]: {', '.join(names)})")
    setattr(sub, key, _coerce(f"{section}.{key}", value, field_type(names[key])))


# ``--set`` keys: section.key, identifiers only; surrounding spaces are dropped ("run.steps = 5")
SET_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
CONFIG_MAX = 16 * 2**20  # an experiment file is a few kilobytes; a larger one is not a config


def split_override(item: str) -> tuple[str, str, str]:
    """``section.key=value`` -> (section, key, value text). The key is stripped of surrounding spaces
    and must then be ``section.key`` of identifiers; anything else is a ConfigError."""
    dotted, sep, text = item.partition("=")
    if not sep or not SET_KEY.fullmatch(dotted.strip()):
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    section, key = dotted.strip().split(".")
    return section, key, text.strip()


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value (1, 0.5, true, [1, 2], "s"); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer too long for int()
        return text


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (TOML), apply ``section.key=value`` overrides, validate, return the Config."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:  # a FIFO, device or directory is refused before any read could block
            text = read_text(p, max_bytes=CONFIG_MAX)
        except FileNotFoundError:
            raise ConfigError(f"--config {str(path)!r}: no such file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--config {str(path)!r}: not a UTF-8 text file "
                              f"(byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise ConfigError(f"--config {str(path)!r}: cannot read: {e.strerror or e}") from None
        try:
            data = tomllib.loads(text)
        except ValueError as e:  # TOMLDecodeError, or an integer too long for int()
            msg = " ".join(str(e).split())
            raise ConfigError(f"--config {str(path)!r}: invalid TOML: {msg}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"config key {section!r} must be inside a [section]")
            for key, value in table.items():
                _apply(cfg, section, key, value)
    for item in overrides:
        section, key, text = split_override(item)
        _apply(cfg, section, key, parse_value(text))
    validate(cfg)
    return cfg
