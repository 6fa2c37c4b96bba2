"""The config reference in docs/config.md, generated from the schema's field docstrings in cifarlab.config (a test
keeps the two in sync): ``python -m cifarlab.config_docs`` prints it."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Literal

from cifarlab import config
from cifarlab.config import Config, shown


def field_docs() -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every leaf field, read from cifarlab.config's attribute docstrings."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(config))
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for field_node, doc_node in zip(node.body, node.body[1:]):
                if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                        and isinstance(doc_node, ast.Expr) and isinstance(doc_node.value, ast.Constant)):
                    docs[(node.name, field_node.target.id)] = str(doc_node.value.value)

    rows: list[tuple[str, str, str]] = []

    def walk(cls: type, prefix: str, instance: Any) -> None:
        for item in dataclasses.fields(cls):
            value = getattr(instance, item.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), f"{prefix}{item.name}.", value)
            else:
                rows.append((f"{prefix}{item.name}", shown(value), docs.get((cls.__name__, item.name), "")))

    walk(Config, "", Config())
    return rows


def allowed_values(cls: type = Config, prefix: str = "") -> dict[str, list[str]]:
    """The values each enumerated key takes (its ``Literal`` type's, and null where it is Optional), by dotted key."""
    allowed: dict[str, list[str]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            allowed |= allowed_values(typing.cast(type, hint), f"{prefix}{name}.")
            continue
        parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        choices = [shown(value) for part in parts if typing.get_origin(part) is Literal
                   for value in typing.get_args(part)]
        if choices:
            allowed[prefix + name] = choices + (["null"] if type(None) in parts else [])
    return allowed


def reference_markdown() -> str:
    """The config reference table in docs/config.md, generated from the schema (a test keeps the two in sync)."""
    allowed = allowed_values()
    lines = ["| key | default | allowed values | meaning |", "|---|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {', '.join(f'`{value}`' for value in allowed.get(key, []))} | "
              f"{doc.replace('|', '/')} |" for key, default, doc in field_docs()]
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m cifarlab.config_docs: print the config reference (paste it into docs/config.md).
    sys.stdout.write(reference_markdown() + "\n")
