"""The ground floor of the config package: the field declaration helper with its metadata, ConfigError,
the value limits every section shares, and the text helpers (types, choices, ranges, values, TOML) that
the schema, the checks and the loader all use. Imports nothing of the package."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the CLI prints it on one line and exits with code 2."""


def config_field(default: Any, help: str, choices: tuple | None = None, *, min: float | None = None,
       max: float | None = None, min_open: bool = False, max_open: bool = False, item: str | None = None,
       type_name: str | None = None):
    """A config field. ``min``/``max`` bound an int or float key (``min_open``/``max_open``: the bound
    itself is excluded); every float key must also be finite. For a list key, ``item`` ("int" or
    "float") is the element type and the bounds apply to each element. ``type_name`` overrides the type
    name shown and checked (``bool|auto``)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    for name, value in (("min", min), ("max", max), ("item", item), ("type", type_name)):
        if value is not None:
            meta[name] = value
    if min_open:
        meta["min_open"] = True
    if max_open:
        meta["max_open"] = True
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Counts (steps, batch sizes, intervals) stay within a signed 32-bit int: the batch_size telemetry
# column is int32, and nothing here needs more.
INT_MAX = 2**31 - 1
# run.seed: derived seeds (seed * 1_000_003 + rank + 7919, seed * 1_000_003 + step in the teacher) must
# stay below torch.manual_seed's 2**64 limit; numpy's default_rng takes any non-negative int. 2**31 - 1
# keeps every derived seed below 2**52 and fits any API that takes a 32-bit seed.
SEED_MAX = 2**31 - 1
# Signals a process cannot catch, so they cannot request a checkpoint.
UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")
RESUME_CHOICES = (False, True, "auto")

TYPE_OK = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "bool|auto": lambda v: isinstance(v, (bool, str)),  # which strings: the choices check
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
}
TYPE_WORDS = {"bool|auto": 'bool or "auto"'}


def type_name(t) -> str:
    return t if isinstance(t, str) else t.__name__


def field_type(f: dataclasses.Field) -> str:
    return f.metadata.get("type") or type_name(f.type)


def choice_text(c: Any) -> str:
    return ("true" if c else "false") if isinstance(c, bool) else str(c)


def num_text(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def range_text(meta, typ: str) -> str:
    """The declared bounds as text: "[0, 1)", "> 0", ">= 0, finite"; "" when there are none."""
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return (("(" if meta.get("min_open") else "[") + f"{num_text(lo)}, {num_text(hi)}"
                + (")" if meta.get("max_open") else "]"))
    parts = []
    if lo is not None:
        parts.append((">" if meta.get("min_open") else ">=") + f" {num_text(lo)}")
    if hi is not None:
        parts.append(("<" if meta.get("max_open") else "<=") + f" {num_text(hi)}")
    if typ == "float" and parts:
        parts.append("finite")
    return ", ".join(parts)


def shown(value: Any) -> str:
    """``repr(value)`` for a message, shortened when it is very long (a 400-digit number)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str()
        return "<a very long integer>"
    return text if len(text) <= 80 else f"{text[:40]}... ({len(text)} characters)"


def toml_string(v: str) -> str:
    """``v`` as a TOML basic string that reads back as ``v``: printable characters as they are (any
    Unicode, an emoji included: the file is UTF-8), quote and backslash escaped, every other character
    (control characters, DEL, bidirectional overrides, line separators) as ``\\uXXXX`` or
    ``\\UXXXXXXXX``. A lone surrogate (undecodable bytes of a command line, kept by Python's
    surrogateescape) is no Unicode scalar value and has no TOML spelling: ValueError (the checks refuse
    such values first, naming the key)."""
    out = []
    for c in v:
        o = ord(c)
        if 0xD800 <= o <= 0xDFFF:
            raise ValueError(f"{shown(v)} holds bytes that are not UTF-8 text; TOML cannot write them")
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (what ``--set`` and a config file take back unchanged)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: dict) -> str:
    """Write a two-level dict (sections of scalars/lists) as TOML; round-trips through tomllib."""
    out = []
    for section, table in data.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)
