"""Which OmegaConf interpolations a file may hold.

A file may have been written by someone else: a shared preset, a copied run's config.yaml, a sweep file, a sweep's
record, a study's journal. Its plain references to other keys (``${optim.lr}``, ``/data/${model.name}``) read only
the config and are allowed. An interpolation that calls a resolver (``${oc.env:AWS_SECRET}``, ``${oc.decode:...}``,
any registered one, also nested or named by another interpolation) can read what the file's author cannot, and would
put it on the console, into config.yaml and W&B: cifarlab.config refuses it. The command line's interpolations are
typed by the person running it and resolved once (cifarlab.config.load_config). An escaped ``\\${...}`` is text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Optional


def resolver_call(tree: Any) -> Optional[tuple[str, str]]:
    """The first (dotted key, text, clipped) in a tree of dicts and lists whose text calls a resolver; None."""
    for key, text in _strings(tree):
        if calls_resolver(text):
            return key, text if len(text) <= 80 else text[:77] + "..."
    return None


def calls_resolver(text: str) -> bool:
    """Whether OmegaConf would call a resolver to resolve ``text``, found as OmegaConf itself finds one: in the
    grammar's parse tree. Text the grammar cannot parse calls nothing (OmegaConf refuses it when it resolves)."""
    if "${" not in text:
        return False
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar_parser import OmegaConfGrammarParser, parse

    try:
        found: list[Any] = [parse(text)]
    except GrammarParseError:
        return False
    while found:
        node = found.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            return True
        found.extend(node.getChildren() if hasattr(node, "getChildren") else [])
    return False


def literal(tree: Any) -> Any:
    """A tree of dicts and lists whose every string OmegaConf reads back as the text it is, no interpolation: each
    ``${`` after k backslashes written as 2k backslashes and ``\\${`` (OmegaConf's escape). For config.yaml, which
    holds resolved values: a value typed as ``\\${x}`` is the text ``${x}``."""
    if isinstance(tree, dict):
        return {key: literal(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [literal(item) for item in tree]
    return re.sub(r"(\\*)\$\{", lambda found: found[1] * 2 + "\\${", tree) if isinstance(tree, str) else tree


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) of every string in a tree of dicts and lists (keys too: YAML allows any)."""
    if isinstance(node, dict):
        for name, value in node.items():
            inner = f"{key}.{name}" if key else str(name)
            yield from _strings(name, inner)
            yield from _strings(value, inner)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _strings(value, f"{key}[{index}]")
    elif isinstance(node, str):
        yield key, node
