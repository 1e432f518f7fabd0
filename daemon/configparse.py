"""Parsing config files that may be broken or hostile, with bounded cost.

Found by fuzzing the loader (tests/test_hostile_input.py), each of these crashed or hung
it before:

* YAML "billion laughs": aliases of aliases, a few hundred bytes that expand to billions
  of nodes; validating (and printing) the expanded data never ends.
* Recursive YAML aliases (`a: &a [*a]`): printing the value for a problem raised.
* Deep nesting: libyaml's composer (PyYAML's CSafeLoader) recurses in C without a
  limit and SEGFAULTS on `[` x 100,000 or `- ` x 100,000 (a 200 KB file); the pure
  Python loader raises RecursionError; json raises RecursionError.
* Integers too long to convert (`port: 1000...0`, 5,000 digits) raise ValueError.
* NaN and Infinity, which Python's json accepts by default, in GeoJSON.

`check_yaml` runs before a YAML text is composed; `load_json` replaces `json.loads`.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

# Config files are shallow (a subject's exclusion list is 4 levels down).
MAX_CONFIG_DEPTH = 64
# Nodes that aliases may add beyond the file's own. Anchors and aliases stay usable for
# sharing a schedule or a zone list; a file that expands past this is refused before
# anything walks the expanded structure.
MAX_ALIAS_EXPANDED_NODES = 100_000

_OPENING = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSING = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class ConfigParseError(Exception):
    """A JSON text cannot be read as config data (not a `ConfigError`: no file name yet)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class YamlLimitError(yaml.YAMLError):
    """A YAML text beyond what the loader accepts; a `yaml.YAMLError`, so every caller
    that reports invalid YAML reports this too."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.problem_mark = yaml.Mark("", 0, line - 1, 0, None, 0) if line else None

    def __str__(self) -> str:
        return self.reason


def check_nesting(text: str, loader_class: type[Any]) -> None:
    """Refuse YAML (or JSON) nested deeper than MAX_CONFIG_DEPTH, before composing it.

    Parses events only: libyaml's parser keeps its own stack (no recursion), and stops
    at the first event past the limit, so the cost is bounded by the limit, not the file.
    """
    loader = loader_class(text)
    depth = 0
    try:
        while True:
            event = loader.get_event()
            if event is None:
                return
            if isinstance(event, _OPENING):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    mark = event.start_mark
                    raise YamlLimitError(
                        f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                        mark.line + 1 if mark is not None else None,
                    )
            elif isinstance(event, _CLOSING):
                depth -= 1
    finally:
        loader.dispose()


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_aliases(root: Node) -> None:
    """Refuse a composed document whose aliases form a cycle or expand it by more than
    MAX_ALIAS_EXPANDED_NODES nodes.

    An alias is the same Node object reached twice, so sizes are memoised per node (linear
    in the distinct nodes); a node reached again while its own size is being computed is a
    cycle. Iterative.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[bool, Node]] = [(False, root)]
    while stack:
        leaving, node = stack.pop()
        key = id(node)
        if leaving:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in in_progress:
            raise YamlLimitError(
                "recursive alias (a node that contains itself)", node.start_mark.line + 1
            )
        in_progress.add(key)
        stack.append((True, node))
        stack.extend((False, child) for child in _children(node))
    distinct, expanded = len(sizes), sizes[id(root)]
    if expanded - distinct > MAX_ALIAS_EXPANDED_NODES:
        raise YamlLimitError(
            f"aliases expand {distinct} nodes to {expanded} "
            f"(more than {MAX_ALIAS_EXPANDED_NODES} added): refused"
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (JSON has no NaN or Infinity)")


def load_json(text: str) -> Any:
    """`json.loads` refusing NaN/Infinity and reporting depth and size failures as
    ConfigParseError (with the line for syntax errors)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigParseError(exc.msg, exc.lineno) from None
    except RecursionError:
        raise ConfigParseError("JSON nested too deeply") from None
    except ValueError as exc:  # NaN, Infinity, an integer beyond int_max_str_digits
        raise ConfigParseError(str(exc)[:160]) from None
