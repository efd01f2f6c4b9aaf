"""docs/config.md, rendered from the config field metadata: one markdown table per section with every
key's type, default and help, as ``reference()`` gives them.

``python -m lbfl_mpi.config.docs > docs/config.md`` rewrites the file; tests/unit/test_docs.py checks
that the committed file equals :func:`config_markdown`. Imports only the schema and the field helpers."""
from __future__ import annotations

import textwrap

from .fields import toml_value
from .schema import reference

REGENERATE = "python -m lbfl_mpi.config.docs > docs/config.md"


def _cell(text: str) -> str:
    """Text for one table cell: a ``|`` would end the cell, so it is escaped."""
    return text.replace("|", "\\|")


def config_markdown() -> str:
    """Every config key, grouped by section, as markdown tables (key, type, default, help)."""
    out = ["# Configuration keys", "",
           f"Generated from the config field metadata (`lbfl_mpi/config/schema*.py`); do not edit by hand. "
           f"Regenerate with `{REGENERATE}`. `lbfl config` prints the same list.", ""]
    section = None
    for key, typ, default, help_ in reference():
        sec = key.split(".", 1)[0]
        if sec != section:
            if section is not None:
                out.append("")
            out += [f"## `[{sec}]`", "", "| key | type | default | help |", "| --- | --- | --- | --- |"]
            section = sec
        out.append(f"| `{key}` | {_cell(typ)} | `{toml_value(default)}` | {_cell(help_)} |")
    return "\n".join(out) + "\n"


def config_template() -> str:
    """A complete experiment file: every section and key at its default, each key under its help as a
    comment; it loads back to the defaults (``lbfl config --toml``)."""
    out = ["# lbfl experiment file: every key at its default (lbfl config --toml). Edit, delete what you",
           "# keep at the default, and run: lbfl train --config THIS_FILE"]
    section = None
    for key, typ, default, help_ in reference():
        sec, name = key.split(".", 1)
        if sec != section:
            out += ["", f"[{sec}]"]
            section = sec
        out += ["#" + (" " + line if line else "") for line in textwrap.wrap(f"({typ}) {help_}", 98)]
        out.append(f"{name} = {toml_value(default)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(config_markdown(), end="")
