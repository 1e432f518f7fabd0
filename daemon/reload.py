"""Hot reload of the operator config: on a file change (polled) or on SIGHUP.

A reload loads and validates the *whole* directory beside the running config, in a worker
thread (10,000 zones take seconds; the event loop keeps handling pings meanwhile), then
the daemon swaps the compiled `CoreConfig` in one assignment on the event loop, between two
messages (`Pipeline.swap_config`). So a ping is decided against the old config or the new
one, never a mixture, and the version it was decided against is stored with it.

Why polling and not inotify (watchfiles): a stat of a handful of files every few seconds
costs nothing, needs no dependency, and also sees changes inotify misses: config on
network file systems, and Kubernetes ConfigMaps, which swap a symlinked directory.

Files are often written in steps (an editor's save, a copy of several files, `git pull`).
Three guards keep a half-written directory out:
1. settle: a change is loaded only once the files have not changed for `settle_seconds`;
2. stability: the files' stat stamp is taken before and after the load (and the content
   hash is recomputed from the bytes read); if anything moved during the load, the result
   is thrown away and the reload is tried again once the files settle;
3. validation: a directory that is wrong as a whole (a subject that names a zone the
   zone files do not have yet) is refused, and the old config keeps running.
The safest way to deploy is still atomic: write the new directory beside the old one and
swap a symlink (`ln -sfn config.v42 config.tmp && mv -T config.tmp config`).

A refused config is logged (without coordinates), counted in
`emon_config_reloads_total{result="rejected"}`, flagged by `emon_config_reload_failing`,
and published with every problem on the operators' channel `emon/v1/operators/config`
(retained: a console that connects later still sees that the files on disk are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from daemon.configfiles import ConfigError, ConfigProblem, LoadedConfig, load_config

_LOGGER = logging.getLogger(__name__)

OPERATORS_CONFIG_TOPIC = "emon/v1/operators/config"
# The same files `configfiles._fingerprint` hashes into CoreConfig.version.
CONFIG_SUFFIXES = (".yaml", ".yml", ".geojson")
# Problems listed in one operators' message; the rest are counted (`emon config check`
# lists them all). 100 lines of ~200 bytes stay far below any broker's message limit.
MAX_PROBLEMS_PER_MESSAGE = 100
# Problems named (file:line key) in the refusal's log line.
MAX_PROBLEMS_LOGGED = 5
# Recording a config version in the database: one attempt's limit, and how many applied
# versions may wait for the database (each holds the directory's text) before the oldest
# is given up (logged, counted).
RECORD_TIMEOUT_SECONDS = 10.0
MAX_UNRECORDED_VERSIONS = 20

RELOADS = Counter(
    "emon_config_reloads", "Config reload attempts by result", ["trigger", "result"]
)
RELOAD_SECONDS = Histogram(
    "emon_config_reload_seconds", "Time to read, validate and compile a config directory",
    buckets=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
)
RELOAD_FAILING = Gauge(
    "emon_config_reload_failing", "1 while the config on disk is refused (the previous runs)"
)
LAST_APPLIED = Gauge(
    "emon_config_last_applied_timestamp_seconds", "When the running config was applied"
)
VERSIONS_UNRECORDED = Counter(
    "emon_config_versions_unrecorded",
    "Applied config versions given up before the database recorded them",
)


class ReloadTrigger(StrEnum):
    START = "start"
    FILE_CHANGE = "file_change"
    SIGNAL = "signal"


class ReloadResult(StrEnum):
    APPLIED = "applied"  # a new version runs
    UNCHANGED = "unchanged"  # valid, and the same content as the running version
    REJECTED = "rejected"  # invalid: the running version stays
    UNSTABLE = "unstable"  # files changed while loading: result discarded, tried again


# (relative path, mtime_ns, size, inode) of every config file, plus the resolved directory
# (a swapped symlink changes it even when the files look alike).
DirectoryStamp = tuple[str, tuple[tuple[str, int, int, int], ...]]


def stamp_directory(directory: Path) -> DirectoryStamp:
    """A cheap signature of the directory's config files: stat only, no reading."""
    entries: list[tuple[str, int, int, int]] = []
    for path in sorted(directory.rglob("*")):
        if path.suffix not in CONFIG_SUFFIXES:
            continue
        try:
            info = path.stat()
        except OSError:
            continue  # vanished between listing and stat: the next stamp differs anyway
        if path.is_file():
            entries.append(
                (str(path.relative_to(directory)), info.st_mtime_ns, info.st_size, info.st_ino)
            )
    try:
        resolved = str(directory.resolve(strict=True))
    except OSError:
        resolved = ""
    return resolved, tuple(entries)


def read_config_files(directory: Path) -> dict[str, bytes]:
    """The config files' contents by relative path, in the order the fingerprint uses."""
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in CONFIG_SUFFIXES:
            files[str(path.relative_to(directory))] = path.read_bytes()
    return files


def fingerprint_files(files: Mapping[str, bytes]) -> str:
    """CoreConfig.version of these contents (the same hash as `configfiles._fingerprint`)."""
    digest = hashlib.sha256()
    for name, content in files.items():
        digest.update(name.encode())
        digest.update(content)
    return digest.hexdigest()[:12]


@dataclass(slots=True)
class LoadAttempt:
    """One load of a directory, done in a worker thread."""

    loaded: LoadedConfig | None
    problems: list[ConfigProblem]
    files: dict[str, bytes]
    stamp: DirectoryStamp
    stable: bool
    seconds: float


LoadFn = Callable[[Path, Mapping[str, str] | None], LoadedConfig]


def load_attempt(
    directory: Path, env: Mapping[str, str] | None = None, load: LoadFn = load_config
) -> LoadAttempt:
    """Load and validate the whole directory; `stable` is False if it changed meanwhile."""
    started = time.perf_counter()
    before = stamp_directory(directory)
    loaded: LoadedConfig | None = None
    problems: list[ConfigProblem]
    try:
        loaded = load(directory, env)
        problems = list(loaded.warnings)
    except ConfigError as exc:
        problems = exc.problems
    try:
        files = read_config_files(directory)
    except OSError:
        files = {}
    after = stamp_directory(directory)
    stable = before == after and (loaded is None or fingerprint_files(files) == loaded.core.version)
    return LoadAttempt(loaded, problems, files, after, stable, time.perf_counter() - started)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def operators_message(
    event: ReloadResult | str,
    trigger: ReloadTrigger,
    directory: Path,
    running_version: str,
    problems: Sequence[ConfigProblem] = (),
    *,
    previous_version: str | None = None,
    restart_required: Sequence[str] = (),
) -> dict[str, Any]:
    """The body published on `emon/v1/operators/config` (docs/wire.md)."""
    errors = sum(p.severity == "error" for p in problems)
    listed = list(problems)[:MAX_PROBLEMS_PER_MESSAGE]
    body: dict[str, Any] = {
        "event": str(event),
        "at": _now_iso(),
        "trigger": trigger.value,
        "directory": str(directory),
        "running_version": running_version,
        "errors": errors,
        "warnings": len(problems) - errors,
        "problems": [p.to_json() for p in listed],
        "problems_omitted": len(problems) - len(listed),
        "restart_required": list(restart_required),
    }
    if previous_version is not None:
        body["previous_version"] = previous_version
    return body


@dataclass(slots=True)
class _Pending:
    loaded: LoadedConfig
    files: dict[str, bytes]
    applied_at: datetime


@dataclass(slots=True)
class ReloadStatus:
    running_version: str
    last_result: ReloadResult | None = None
    last_attempt_at: datetime | None = None
    failing: bool = False
    problems: list[ConfigProblem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "running_version": self.running_version,
            "last_result": self.last_result.value if self.last_result else None,
            "last_attempt_at": self.last_attempt_at.isoformat() if self.last_attempt_at else None,
            "failing": self.failing,
        }


ApplyFn = Callable[[LoadedConfig], Sequence[str]]
NotifyFn = Callable[[dict[str, Any]], None]
RecordFn = Callable[[str, Path, Mapping[str, str], datetime], Awaitable[None]]


class ConfigReloader:
    """Watches a config directory and swaps in each new valid version.

    `apply(new)` swaps the config into the running daemon and returns the settings that
    only take effect on restart; it runs on the event loop, so it happens between two
    messages. `notify(body)` publishes on the operators' channel. `record(version,
    directory, files, applied_at)` stores the version's files in the database.
    """

    def __init__(
        self,
        directory: Path,
        current: LoadedConfig,
        apply: ApplyFn,
        notify: NotifyFn,
        record: RecordFn | None = None,
        env: Mapping[str, str] | None = None,
        load: LoadFn = load_config,
    ) -> None:
        self._directory = directory
        self._load = load
        self._current = current
        self._apply = apply
        self._notify = notify
        self._record = record
        self._env = env
        self._requested = asyncio.Event()
        self._last_stamp: DirectoryStamp | None = None
        self._pending_stamp: DirectoryStamp | None = None
        self._pending_since: float | None = None
        self._unrecorded: list[_Pending] = []
        self._record_failing = False
        self.status = ReloadStatus(current.core.version)

    @property
    def current(self) -> LoadedConfig:
        return self._current

    def request_reload(self) -> None:
        """Reload now (SIGHUP): no settle time, and even if nothing seems to have changed."""
        self._requested.set()

    # ------------------------------------------------------------------ the worker

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and reload until `stop` is set. One named task owns this (emon-config-reload)."""
        await self._start()
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await self._record_pending()
            timeout = self._wait_seconds(loop.time())
            waiters = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._requested.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            if stop.is_set():
                return
            if self._requested.is_set():
                self._requested.clear()
                await self.reload(ReloadTrigger.SIGNAL)
                continue
            if self._poll_interval() > 0:
                await self._poll(loop.time())

    def _poll_interval(self) -> float:
        return self._current.settings.reload.poll_interval_seconds

    def _wait_seconds(self, now: float) -> float | None:
        interval = self._poll_interval()
        if interval <= 0:
            # Only SIGHUP; still wake up now and then while versions wait for the database.
            return RECORD_TIMEOUT_SECONDS if self._unrecorded else None
        if self._pending_since is not None:
            settle = self._current.settings.reload.settle_seconds
            return max(0.0, min(interval, self._pending_since + settle - now))
        return interval

    async def _start(self) -> None:
        """Take the starting stamp, publish the running version, record it."""
        attempt_stamp = await asyncio.to_thread(stamp_directory, self._directory)
        files = await asyncio.to_thread(self._read_files)
        version = self._current.core.version
        if fingerprint_files(files) == version:
            self._last_stamp = attempt_stamp
            self._queue_record(self._current, files)
        else:
            # The files changed between the daemon's first load and now: reload at once.
            _LOGGER.info("config directory changed since start-up; reloading")
            self._last_stamp = None
        LAST_APPLIED.set(time.time())
        RELOAD_FAILING.set(0)
        self._notify(
            operators_message(
                "loaded", ReloadTrigger.START, self._directory, version,
                list(self._current.warnings),
            )
        )

    def _read_files(self) -> dict[str, bytes]:
        try:
            return read_config_files(self._directory)
        except OSError as exc:
            _LOGGER.warning("cannot read the config directory: %s", exc.strerror)
            return {}

    async def _poll(self, now: float) -> None:
        stamp = await asyncio.to_thread(stamp_directory, self._directory)
        if stamp == self._last_stamp:
            self._pending_stamp, self._pending_since = None, None
            return
        if stamp != self._pending_stamp:
            # Changed (again): wait until it has been quiet for the settle time.
            self._pending_stamp, self._pending_since = stamp, now
        settle = self._current.settings.reload.settle_seconds
        if self._pending_since is not None and now - self._pending_since >= settle:
            await self.reload(ReloadTrigger.FILE_CHANGE)

    # ------------------------------------------------------------------ one reload

    async def reload(self, trigger: ReloadTrigger) -> ReloadResult:
        """Load the directory whole and apply it if it is valid and new."""
        try:
            attempt = await asyncio.to_thread(
                load_attempt, self._directory, self._env, self._load
            )
        except Exception as exc:  # a loader bug must not stop the daemon: refuse, say why
            _LOGGER.exception("config reload failed unexpectedly")
            problem = ConfigProblem(str(self._directory), "(load)", "", f"internal error: {exc}")
            attempt = LoadAttempt(None, [problem], {}, ("", ()), True, 0.0)
        RELOAD_SECONDS.observe(attempt.seconds)
        self.status.last_attempt_at = datetime.now(UTC)
        if not attempt.stable:
            # Someone is still writing: forget this result, retry once it settles.
            RELOADS.labels(trigger.value, ReloadResult.UNSTABLE.value).inc()
            _LOGGER.info("config directory changed during the reload; trying again")
            self._last_stamp = None
            self._pending_stamp = attempt.stamp
            self._pending_since = asyncio.get_running_loop().time()
            self.status.last_result = ReloadResult.UNSTABLE
            return ReloadResult.UNSTABLE
        self._last_stamp = attempt.stamp
        self._pending_stamp, self._pending_since = None, None
        if attempt.loaded is None:
            return self._rejected(trigger, attempt)
        return self._accepted(trigger, attempt, attempt.loaded)

    def _rejected(self, trigger: ReloadTrigger, attempt: LoadAttempt) -> ReloadResult:
        errors = [p for p in attempt.problems if p.severity == "error"]
        version = self._current.core.version
        RELOADS.labels(trigger.value, ReloadResult.REJECTED.value).inc()
        RELOAD_FAILING.set(1)
        # Places only: reasons can carry coordinates (a home's polygon), which stay off
        # the log; the operators' message and `emon config check` have them.
        places = ", ".join(
            f"{p.file}:{p.line or '?'} {p.key}" for p in errors[:MAX_PROBLEMS_LOGGED]
        )
        _LOGGER.error(
            "config reload refused (%s): %d error(s) in %s; still running version %s. "
            "First: %s. Details: `emon config check %s` or topic %s",
            trigger.value, len(errors), self._directory, version, places, self._directory,
            OPERATORS_CONFIG_TOPIC,
        )
        for problem in attempt.problems:
            _LOGGER.debug("config problem: %s", problem)
        self.status.last_result, self.status.failing = ReloadResult.REJECTED, True
        self.status.problems = attempt.problems
        self._notify(
            operators_message(
                ReloadResult.REJECTED, trigger, self._directory, version, attempt.problems
            )
        )
        return ReloadResult.REJECTED

    def _accepted(
        self, trigger: ReloadTrigger, attempt: LoadAttempt, loaded: LoadedConfig
    ) -> ReloadResult:
        previous = self._current
        was_failing = self.status.failing
        RELOAD_FAILING.set(0)
        self.status.failing, self.status.problems = False, list(loaded.warnings)
        if loaded.core.version == previous.core.version:
            RELOADS.labels(trigger.value, ReloadResult.UNCHANGED.value).inc()
            self.status.last_result = ReloadResult.UNCHANGED
            _LOGGER.info("config reload (%s): unchanged, version %s", trigger.value,
                         previous.core.version)
            if was_failing or trigger is ReloadTrigger.SIGNAL:
                # Clear the retained refusal: the files on disk are the running ones again.
                self._notify(
                    operators_message(
                        ReloadResult.UNCHANGED, trigger, self._directory,
                        previous.core.version, list(loaded.warnings),
                    )
                )
            return ReloadResult.UNCHANGED
        # The swap itself: synchronous, on the event loop, so between two messages.
        restart_required = list(self._apply(loaded))
        self._current = loaded
        self.status.running_version = loaded.core.version
        self.status.last_result = ReloadResult.APPLIED
        RELOADS.labels(trigger.value, ReloadResult.APPLIED.value).inc()
        LAST_APPLIED.set(time.time())
        _LOGGER.info(
            "config reload (%s) applied: version %s -> %s in %.2f s, %d warning(s)%s",
            trigger.value, previous.core.version, loaded.core.version, attempt.seconds,
            len(loaded.warnings),
            f"; restart needed for: {', '.join(restart_required)}" if restart_required else "",
        )
        self._queue_record(loaded, attempt.files)
        self._notify(
            operators_message(
                ReloadResult.APPLIED, trigger, self._directory, loaded.core.version,
                list(loaded.warnings), previous_version=previous.core.version,
                restart_required=restart_required,
            )
        )
        return ReloadResult.APPLIED

    # ------------------------------------------------------------------ recording

    def _queue_record(self, loaded: LoadedConfig, files: Mapping[str, bytes]) -> None:
        if self._record is None:
            return
        self._unrecorded.append(_Pending(loaded, dict(files), datetime.now(UTC)))
        if len(self._unrecorded) > MAX_UNRECORDED_VERSIONS:
            dropped = self._unrecorded.pop(0)
            VERSIONS_UNRECORDED.inc()
            _LOGGER.error(
                "config version %s not recorded: the database has been unavailable for %d "
                "newer versions", dropped.loaded.core.version, MAX_UNRECORDED_VERSIONS,
            )

    async def _record_pending(self) -> None:
        if self._record is None:
            return
        while self._unrecorded:
            pending = self._unrecorded[0]
            texts = {name: content.decode("utf-8", "replace")
                     for name, content in pending.files.items()}
            try:
                await asyncio.wait_for(
                    self._record(pending.loaded.core.version, self._directory, texts,
                                 pending.applied_at),
                    RECORD_TIMEOUT_SECONDS,
                )
            except Exception as exc:  # database errors of any kind: keep it, retry later
                if not self._record_failing:
                    _LOGGER.warning("recording config version %s failed (%s); will retry",
                                    pending.loaded.core.version, exc)
                self._record_failing = True
                return
            self._record_failing = False
            self._unrecorded.pop(0)

    async def close(self) -> None:
        """Last chance to record versions that waited for the database (shutdown)."""
        with contextlib.suppress(Exception):
            await self._record_pending()
