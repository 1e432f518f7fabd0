"""Parsing config files that may be broken or hostile, with bounded cost.

The loader (daemon/configfiles.py) turns every problem into a `ConfigProblem`; what it
gets from here is either data or a `ConfigParseError` with a reason and, where known, a
line. Found by fuzzing the loader (tests/test_hostile_input.py): bytes that are not
UTF-8, YAML "billion laughs" (aliases of aliases: a few hundred bytes that expand to
billions of nodes and hang validation), recursive aliases, nesting deep enough to exhaust
Python's recursion limit, integers too long to convert, and NaN/Infinity in GeoJSON
(which Python's json accepts by default).
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

# Nodes that aliases may add beyond the file's own. Anchors and aliases stay usable for
# sharing a schedule or a zone list; a file that expands past this is refused before
# anything walks the expanded structure.
MAX_ALIAS_EXPANDED_NODES = 100_000
# Config files are shallow (a subject's exclusion list is 4 levels down).
MAX_YAML_FLOW_DEPTH = 64


class ConfigParseError(Exception):
    """The text cannot be read as config data (not a `ConfigError`: no file name yet)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigParseError(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}", line
        ) from None


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(distinct nodes, nodes after expanding aliases) of a composed YAML document.

    Aliases are the same Node object reached twice, so sizes are memoised per node; a
    node reached again while its own size is being computed is a cycle.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    # Iterative post-order walk: ("enter", node) then ("exit", node).
    stack: list[tuple[bool, yaml.Node]] = [(False, root)]
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
            raise ConfigParseError("recursive YAML alias (a node that contains itself)")
        in_progress.add(key)
        stack.append((True, node))
        stack.extend((False, child) for child in _children(node))
    return len(sizes), sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep flow nesting ([[[[...) as it scans it. PyYAML's scanner
    does work proportional to the nesting depth for every token, so 5,000 brackets take
    seconds before the composer's recursion even fails (measured: 3 s)."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_YAML_FLOW_DEPTH:
            raise ConfigParseError(
                f"YAML nested deeper than {MAX_YAML_FLOW_DEPTH}", self.line + 1
            )
        super().fetch_flow_collection_start(TokenClass)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` that refuses what would cost unbounded time or crash.

    Raises ConfigParseError; yaml.YAMLError (syntax) passes through for the caller's own
    message with its line.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        distinct, expanded = _expanded_size(node)
        if expanded - distinct > MAX_ALIAS_EXPANDED_NODES:
            raise ConfigParseError(
                f"YAML aliases expand {distinct} nodes to {expanded} "
                f"(more than {MAX_ALIAS_EXPANDED_NODES} added): refused"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigParseError("YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond int_max_str_digits
        raise ConfigParseError(f"invalid value: {str(exc)[:120]}") from None
    finally:
        loader.dispose()


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
    except ValueError as exc:
        raise ConfigParseError(str(exc)) from None


def check_coordinates(coordinates: Any) -> None:
    """Every number in a GeoJSON coordinates array is a finite int or float.

    json turns 1e400 into infinity, and a NaN vertex makes GEOS raise or, worse, build a
    polygon that contains nothing. Iterative: nesting depth costs no stack.
    """
    stack = [coordinates]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigParseError(f"coordinate {str(value)[:40]!r} is not a number")
        else:
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond any double
                finite = False
            if not finite:
                raise ConfigParseError(f"coordinate {str(value)[:40]} is not finite")
