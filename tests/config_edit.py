"""Editing a copy of the example config in tests: the shipped files are the baseline, each
test changes one thing and looks at what the loader says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.configfiles import ConfigError, ConfigProblem, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def copy_example_config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    return target


def edit(directory: Path, relative: str, old: str, new: str) -> None:
    path = directory / relative
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {relative}: the example config changed"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def problems_of(directory: Path) -> list[ConfigProblem]:
    """The errors that refuse the config in `directory` (warnings, e.g. zones of the example
    that no subject uses, do not refuse a config)."""
    with pytest.raises(ConfigError) as info:
        load_config(directory, env={})
    assert str(info.value)  # readable as a whole
    return info.value.errors
