"""Line numbers for config problems: which line of which file a key path lives on.

A `ConfigProblem` names its place by a dotted key path (`subjects.0.officer`,
`features.3.geometry.coordinates.0.5`), the same path pydantic reports in its errors. This
module maps such paths to 1-based line numbers:

- YAML files are parsed once into a node tree (libyaml's C parser when installed), which
  gives both the data and each key's line; the same walk finds duplicate keys, which
  PyYAML would otherwise resolve silently by keeping the last one.
- GeoJSON files are parsed with `json` (fast); their line index is built only when a
  problem needs it, from the same node tree: valid JSON is YAML once tabs (JSON
  whitespace, never inside a JSON string) are turned into spaces.

A path that is not in the file (a missing key, a path pydantic decorates) resolves to the
nearest enclosing path that is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from daemon.configparse import YamlLimitError, check_aliases, check_nesting

_LOGGER = logging.getLogger(__name__)

_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader]
try:
    _Loader = yaml.CSafeLoader  # libyaml: ~10x faster than the pure-Python parser
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

TOP_KEY = "(top)"


def join_path(parts: tuple[str | int, ...] | list[str | int]) -> str:
    """The dotted key path of pydantic's `loc` tuple (and of our own checks)."""
    return ".".join(str(p) for p in parts) or TOP_KEY


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    path: str
    line: int
    first_line: int


class LineIndex:
    """Dotted key path -> 1-based line where that key (or list item) starts."""

    def __init__(self, lines: dict[str, int] | None = None) -> None:
        self._lines: dict[str, int] = lines if lines is not None else {}

    def __len__(self) -> int:
        return len(self._lines)

    def line_of(self, path: str) -> int | None:
        """Line of `path`, else of its nearest enclosing path; None if nothing encloses it."""
        candidate = path
        while True:
            line = self._lines.get(candidate)
            if line is not None:
                return line
            # Ids may contain dots, so strip one component at a time from the right and
            # try every prefix rather than splitting the path up front.
            cut = candidate.rfind(".")
            if cut < 0:
                return self._lines.get("")
            candidate = candidate[:cut]


class LazyLineIndex(LineIndex):
    """A line index built on first use (for large GeoJSON files that are usually valid)."""

    def __init__(self, build: Callable[[], LineIndex]) -> None:
        super().__init__()
        self._build: Callable[[], LineIndex] | None = build

    def line_of(self, path: str) -> int | None:
        if self._build is not None:
            built = self._build()
            self._build = None
            self._lines = built._lines
        return super().line_of(path)


@dataclass(slots=True)
class YamlDocument:
    data: Any
    lines: LineIndex
    duplicate_keys: list[DuplicateKey] = field(default_factory=list)


def _walk(
    node: Node,
    prefix: str,
    lines: dict[str, int],
    duplicates: list[DuplicateKey] | None,
    seen_nodes: set[int],
) -> None:
    if id(node) in seen_nodes:  # an alias to a node already walked (or a recursive one)
        return
    seen_nodes.add(id(node))
    if isinstance(node, MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else str(key_node.tag)
            path = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in first_lines:
                if duplicates is not None and key != "<<":
                    duplicates.append(DuplicateKey(path, line, first_lines[key]))
                continue
            first_lines[key] = line
            lines[path] = line
            _walk(value_node, path, lines, duplicates, seen_nodes)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}.{index}" if prefix else str(index)
            lines[path] = item.start_mark.line + 1
            _walk(item, path, lines, duplicates, seen_nodes)


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document into its data and its line index.

    Raises `yaml.YAMLError` like `yaml.safe_load` (the caller reports its mark), also for
    what would crash or hang the process (daemon/configparse.py: nesting that segfaults
    libyaml's composer, alias bombs, integers too long to convert)."""
    check_nesting(text, _Loader)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, LineIndex({"": 1}))
        if "*" in text:  # no alias without a '*': most files skip the walk
            check_aliases(node)
        try:
            data = loader.construct_document(node)
        except ValueError as exc:  # e.g. an integer beyond sys.int_info's digit limit
            raise YamlLimitError(f"invalid value: {str(exc)[:120]}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    duplicates: list[DuplicateKey] = []
    _walk(node, "", lines, duplicates, set())
    return YamlDocument(data, LineIndex(lines), duplicates)


def json_line_index(text: str) -> LineIndex:
    """Line index of a JSON text; empty if it cannot be built."""
    text = text.replace("\t", " ")
    try:
        # Built for problems in files json refused too: never hand libyaml's composer
        # a nesting that crashes it.
        check_nesting(text, _Loader)
    except yaml.YAMLError:
        return LineIndex()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        # JSON that YAML 1.1 does not read (e.g. a key over 1024 characters): problems in
        # this file are still reported, only without line numbers.
        _LOGGER.debug("no line index for a JSON file: %s", exc)
        return LineIndex()
    finally:
        loader.dispose()
    if node is None:
        return LineIndex()
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    _walk(node, "", lines, None, set())
    return LineIndex(lines)
