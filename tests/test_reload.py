"""Hot reload, the worker alone (no services): settle, stability, refusal, SIGHUP semantics.

The end-to-end reload under load (real Mosquitto and PostgreSQL) is in tests/test_reload_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon.configfiles import LoadedConfig, load_config
from daemon.reload import (
    ConfigReloader,
    LoadFn,
    ReloadResult,
    ReloadTrigger,
    fingerprint_files,
    read_config_files,
    stamp_directory,
)
from tests.configkit import SETTINGS_YAML, SUBJECTS_YAML, write_config

FAST_RELOAD = SETTINGS_YAML + "reload:\n  poll_interval_seconds: 0.02\n  settle_seconds: 0.1\n"
SIGNAL_ONLY = SETTINGS_YAML + "reload:\n  poll_interval_seconds: 0\n"
EVENTUALLY_SECONDS = 5.0
# A valid change: s-b gets another officer.
CHANGED_SUBJECTS = SUBJECTS_YAML.replace(
    "officer: off-a\n    devices:\n      - {id: tag-b",
    "officer: sup\n    devices:\n      - {id: tag-b",
)


class Harness:
    def __init__(self, directory: Path, load: LoadFn = load_config) -> None:
        self.directory = directory
        self.applied: list[LoadedConfig] = []
        self.messages: list[dict[str, Any]] = []
        self.recorded: list[str] = []
        self.restart_required: list[str] = []
        self.reloader = ConfigReloader(
            directory, load_config(directory), self.apply, self.messages.append, self.record,
            load=load,
        )

    def apply(self, loaded: LoadedConfig) -> list[str]:
        self.applied.append(loaded)
        return list(self.restart_required)

    async def record(self, version: str, *_: Any) -> None:
        self.recorded.append(version)

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]

    async def until(self, predicate: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENTUALLY_SECONDS
        while not predicate():
            assert loop.time() < deadline, f"not reached; events so far {self.events()}"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def run_reloader(harness: Harness) -> AsyncIterator[Harness]:
    stop = asyncio.Event()
    task = asyncio.create_task(harness.reloader.run(stop), name="test-reloader")
    await harness.until(lambda: harness.events() == ["loaded"])
    try:
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, EVENTUALLY_SECONDS)


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    settings = getattr(request, "param", FAST_RELOAD)
    async with run_reloader(Harness(write_config(tmp_path / "config", settings=settings))) as h:
        yield h


def _touch_later(path: Path) -> None:
    """Make sure the stamp changes even on file systems with coarse mtimes."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))


async def test_start_publishes_and_records_the_running_version(running: Harness) -> None:
    version = running.reloader.current.core.version
    assert running.messages[0]["running_version"] == version
    assert running.messages[0]["trigger"] == "start"
    await running.until(lambda: running.recorded == [version])
    assert fingerprint_files(read_config_files(running.directory)) == version


async def test_an_invalid_change_keeps_the_old_config_and_is_reported(running: Harness) -> None:
    old_version = running.reloader.current.core.version
    subjects = running.directory / "subjects.yaml"
    subjects.write_text(SUBJECTS_YAML.replace("home_zone: home-b", "home_zone: home-x"))

    await running.until(lambda: "rejected" in running.events())
    assert running.applied == []
    assert running.reloader.current.core.version == old_version
    assert running.reloader.status.failing
    message = running.messages[-1]
    assert message["running_version"] == old_version
    assert message["trigger"] == "file_change"
    assert (message["errors"], message["warnings"]) == (1, 1)  # home-b is now unused
    assert message["problems"][0] == {
        "file": "subjects.yaml", "line": 18, "key": "subjects.1.home_zone", "value": "home-x",
        "reason": "zone not defined", "severity": "error",
    }
    assert message["problems"][1]["reason"] == "zone is not used by any subject"

    # Fixed: the new version is applied and the refusal cleared.
    subjects.write_text(CHANGED_SUBJECTS)
    await running.until(lambda: "applied" in running.events())
    assert len(running.applied) == 1
    assert not running.reloader.status.failing
    applied = running.messages[-1]
    assert applied["previous_version"] == old_version
    assert applied["running_version"] == running.applied[0].core.version != old_version
    assert running.applied[0].core.subjects["s-b"].officer_id == "sup"
    await running.until(lambda: running.applied[0].core.version in running.recorded)


async def test_a_change_is_loaded_once_after_the_files_settle(running: Harness) -> None:
    subjects = running.directory / "subjects.yaml"
    text = SUBJECTS_YAML
    # Several writes in quick succession, each well inside the settle time.
    for step in range(5):
        text = text.replace(f"officer: off-a\n    devices:\n      - {{id: tag-{'ab'[step % 2]}",
                            f"officer: sup\n    devices:\n      - {{id: tag-{'ab'[step % 2]}")
        subjects.write_text(text + f"# step {step}\n")
        await asyncio.sleep(0.03)
    await running.until(lambda: "applied" in running.events())
    await asyncio.sleep(0.3)
    assert len(running.applied) == 1
    assert running.applied[0].core.subjects["s-a"].officer_id == "sup"
    assert running.applied[0].core.subjects["s-b"].officer_id == "sup"


async def test_a_directory_that_changes_during_the_load_is_loaded_again(
    tmp_path: Path,
) -> None:
    directory = write_config(tmp_path / "config", settings=FAST_RELOAD)
    subjects = directory / "subjects.yaml"
    calls = 0

    def load_while_someone_writes(path: Path, env: Mapping[str, str] | None) -> LoadedConfig:
        nonlocal calls
        calls += 1
        loaded = load_config(path, env)
        if calls == 1:  # the first load reads one state, then the file changes under it
            subjects.write_text(CHANGED_SUBJECTS + "# final\n")
            _touch_later(subjects)
        return loaded

    async with run_reloader(Harness(directory, load_while_someone_writes)) as running:
        subjects.write_text(SUBJECTS_YAML + "# first\n")
        await running.until(lambda: "applied" in running.events())
        assert len(running.applied) == 1
        final = running.applied[0]
        # Only the state after the last write ran: the half-way one was thrown away.
        assert final.core.subjects["s-b"].officer_id == "sup"
        assert final.core.version == fingerprint_files(read_config_files(directory))
        assert calls == 2


@pytest.mark.parametrize("running", [SIGNAL_ONLY], indirect=True)
async def test_with_polling_off_only_sighup_reloads(running: Harness) -> None:
    subjects = running.directory / "subjects.yaml"
    subjects.write_text(CHANGED_SUBJECTS)
    await asyncio.sleep(0.3)
    assert running.applied == []

    running.reloader.request_reload()
    await running.until(lambda: "applied" in running.events())
    assert running.messages[-1]["trigger"] == "signal"

    # SIGHUP with nothing changed: reported as unchanged (the operator asked).
    running.reloader.request_reload()
    await running.until(lambda: running.events()[-1] == "unchanged")
    assert len(running.applied) == 1


async def test_restart_only_settings_are_named(running: Harness) -> None:
    running.restart_required = ["mqtt"]
    (running.directory / "settings.yaml").write_text(FAST_RELOAD + "mqtt:\n  port: 1884\n")
    await running.until(lambda: "applied" in running.events())
    assert running.messages[-1]["restart_required"] == ["mqtt"]


async def test_reload_result_of_a_direct_call(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", settings=SIGNAL_ONLY)
    harness = Harness(directory)
    assert await harness.reloader.reload(ReloadTrigger.SIGNAL) is ReloadResult.UNCHANGED
    (directory / "schedules.yaml").write_text("schedules: {night: {windows: []}}\n")
    assert await harness.reloader.reload(ReloadTrigger.SIGNAL) is ReloadResult.REJECTED
    assert harness.messages[-1]["problems"][0]["key"] == "schedules.night.windows"


def test_stamp_follows_a_swapped_symlink(tmp_path: Path) -> None:
    first = write_config(tmp_path / "v1")
    second = write_config(tmp_path / "v2")
    link = tmp_path / "config"
    link.symlink_to(first)
    before = stamp_directory(link)
    _touch_later(first / "subjects.yaml")
    assert stamp_directory(link) != before
    swapped = tmp_path / "config.new"
    swapped.symlink_to(second)
    swapped.replace(link)
    assert stamp_directory(link)[0] == str(second.resolve())
