"""The configuration reference of docs/reference.md, generated from ``ModelConfig`` and ``TrainConfig``.

    python docs/config_reference.py                  # print the Markdown table
    python docs/config_reference.py --write docs/reference.md  # replace the table between its markers

Each row is one dataclass field: its YAML / ``--set`` key, its default and the meaning given in the
class's ``Attributes:`` docstring. A field without a documented meaning is an error, so the table
cannot silently miss one (``tests/test_readme.py`` also checks the page against the fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from muse_tf.config import ModelConfig, TrainConfig  # noqa: E402

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
SECTIONS = (("model", ModelConfig), ("train", TrainConfig))


def attribute_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of the class docstring's ``Attributes:`` section, continuation lines
    joined. ``inspect.cleandoc`` first: Python 3.13 strips the indentation that older Pythons keep."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    _, _, section = doc.partition("Attributes:")
    entries: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            name, text = match.groups()
            entries[name] = text.strip()
        elif name and line.startswith(" " * 8):
            entries[name] += " " + line.strip()
        elif line.strip():
            name = None
    return entries


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def format_default(value: Any) -> str:
    """A default as it would be written in YAML, compactly."""
    if isinstance(value, dict) and len(set(value.values())) == 1:
        return f"`{next(iter(value.values()))}` per vocabulary"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:.6g}`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{value}`"


def markdown() -> str:
    """The table, one row per field of ``ModelConfig`` then ``TrainConfig``."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, cls in SECTIONS:
        docs = attribute_docs(cls)
        for field in dataclasses.fields(cls):
            if field.name not in docs:
                raise ValueError(f"{cls.__name__}.{field.name} has no entry in its Attributes docstring.")
            meaning = docs[field.name].replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{section}.{field.name}` | {format_default(default_of(field))} | {meaning} |")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> None:
    """Prints the table, or writes it into a Markdown file between the markers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="replace the table between the markers in FILE")
    args = parser.parse_args(argv)
    table = markdown()
    if args.write:
        path = Path(args.write)
        path.write_text(replace_between_markers(path.read_text(), table))
    else:
        print(table)


if __name__ == "__main__":
    main()
