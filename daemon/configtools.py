"""`emon config check`: every problem of a config directory, one line each.

Text lines are `DIR/FILE:LINE: KEY = VALUE: REASON` (the `FILE:LINE:` prefix is what editors
and CI annotators jump to); warnings say `warning:` after the place. `--json` prints one
JSON object per problem instead. Exit status: 0 valid (warnings allowed), 1 invalid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from daemon.configfiles import ConfigError, ConfigProblem, LoadedConfig, load_config

EXIT_VALID = 0
EXIT_INVALID = 1


def _ordered(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    return sorted(problems, key=lambda p: (p.severity != "error", p.file, p.line or 0))


def check_directory(directory: Path) -> tuple[LoadedConfig | None, list[ConfigProblem]]:
    """The loaded config (None if refused) and all its problems, errors first."""
    try:
        loaded = load_config(directory)
    except ConfigError as exc:
        return None, _ordered(exc.problems)
    return loaded, _ordered(loaded.warnings)


def config_check(directory: Path, out: IO[str], *, as_json: bool = False) -> int:
    loaded, problems = check_directory(directory)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    for problem in problems:
        if as_json:
            out.write(json.dumps({"directory": str(directory), **problem.to_json()},
                                 ensure_ascii=False) + "\n")
        else:
            out.write(f"{directory}/{problem}\n")
    if as_json:
        return EXIT_VALID if loaded is not None else EXIT_INVALID
    if loaded is None:
        out.write(f"{directory}: INVALID: {errors} error(s), {warnings} warning(s)\n")
        return EXIT_INVALID
    core = loaded.core
    out.write(
        f"{directory}: valid: {len(core.subjects)} subjects, {len(core.devices)} devices, "
        f"{len(core.zones)} zones, version {core.version}; {warnings} warning(s)\n"
    )
    return EXIT_VALID
