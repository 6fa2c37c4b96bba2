"""One line for each way a config load fails (cifarlab.config.load_config raises them as its ConfigError): OmegaConf's
own messages span several lines and name the key last, a preset's keys may be any text (line breaks included), and
two of its refusals are no OmegaConf error at all (a mapping merged onto a list is a TypeError; a YAML file holding a
scalar, an IOError). Works on the schema's dataclass, which the caller passes (cifarlab.config imports this)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from cifarlab.errors import printable


def one_line(error: OmegaConfBaseException, schema: type) -> str:
    """OmegaConf's message, its first line: the reason, naming the dotted key (an unknown key with the keys its
    section has)."""
    text, key = str(error), getattr(error, "full_key", None)
    # A key's own line breaks would cut the reason short and print as lines of their own.
    for part in {str(key or ""), str(getattr(error, "key", None) or "")} - {""}:
        text = text.replace(part, printable(part))
    key = printable(str(key)) if key else key
    reason = text.splitlines()[0].strip() if text else type(error).__name__
    if "not in" in reason and key:
        section = str(key).rpartition(".")[0]
        allowed = allowed_keys(schema, section)
        return f"unknown config key '{key}'" + (f"; keys in '{section or 'top level'}': {', '.join(allowed)}"
                                                if allowed else "")
    return f"{key}: {reason}" if key else reason


def not_a_mapping(schema: type) -> str:
    """What a preset that is a list or a scalar is not."""
    return f"not a YAML mapping of config sections ({', '.join(f'{key}:' for key in allowed_keys(schema, ''))})"


def below_a_list(keys: list[str], schema: type) -> str:
    """The first of the dotted ``keys`` set below a list-valued one (``data.mean.0=1``), which OmegaConf's merge
    refuses with a TypeError."""
    for key in keys:
        parts = key.split(".")
        lists = [".".join(parts[:end]) for end in range(1, len(parts)) if _is_list(schema, parts[:end])]
        if lists:
            return f"{printable(key)}: {lists[0]} is a list, set whole (e.g. {lists[0]}=[...]), not item by item"
    return "a key is set below a list-valued key (such as data.mean); set the list whole"


def refuse_config_flags(parser: argparse.ArgumentParser, argv: Sequence[str], schema: type,
                        passed_on: Sequence[str] = ()) -> None:
    """Exit 2 with one line where ``argv`` holds ``--flag``s that ``parser`` does not know but that name a config key
    by its last part (``--epochs 5``, ``--batch-size=64``), suggesting the override (``train.epochs=5``); every other
    word is left to the parser, and to the program it passes options on to (``passed_on``: the sweep's accelerate
    launch options). Called before parsing, so the hint comes before any other complaint."""
    # argparse has no public list of a parser's options; its actions' option_strings are the documented attribute.
    known = [*(name for action in parser._actions for name in action.option_strings), *passed_on]
    leaves = leaf_keys(schema)
    unknown, hints = [], []
    for index, word in enumerate(argv):
        if word == "--":
            break
        flag, equals, value = word.partition("=")
        if not flag.startswith("--") or any(name == flag or (parser.allow_abbrev and name.startswith(flag))
                                            for name in known):
            continue
        keys = [key for key in leaves if key.rpartition(".")[2] == flag[2:].replace("-", "_")]
        following = argv[index + 1] if index + 1 < len(argv) else "-"
        if not equals and not following.startswith("-") and "=" not in following:
            value = following
        if keys:
            unknown.append(flag)
            hints.append(" or ".join(f"{key}={printable(value) or 'VALUE'}" for key in keys))
    if unknown:
        parser.exit(2, f"cifarlab: error: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                       f"config keys are set as key=value: {', '.join(hints)}\n")


def leaf_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema that holds a value (not a section)."""
    keys = []
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            keys += leaf_keys(typing.cast(type, hint), f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def allowed_keys(schema: type, section: str) -> list[str]:
    node: Any = schema
    for part in [p for p in section.split(".") if p]:
        if not dataclasses.is_dataclass(node):
            return []
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return []
        node = fields[part].default_factory
        node = type(node()) if callable(node) else node
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _is_list(schema: type, parts: list[str]) -> bool:
    """Whether the schema's field at ``parts`` holds a list (data.mean, logging.wandb.tags)."""
    node: Any = schema
    for part in parts:
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            return False
        node = hints[part]
    return list in (typing.get_origin(node), *(typing.get_origin(arg) for arg in typing.get_args(node)))

