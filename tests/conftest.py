"""Shared fixtures: real Mosquitto and PostgreSQL servers, and a lingering-task check.

The servers are private processes (daemon.localservices) started once per session on free
loopback ports under pytest's temporary directory. A missing binary makes the fixture FAIL,
not skip: `bash scripts/test.sh` installs what is needed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType

import pytest
from pytest_asyncio import is_async_test

from daemon.localservices import LocalServiceError, MosquittoProcess, PostgresProcess

pytest_plugins = ("pytester",)

# Time a test's leftover tasks get to finish by themselves (a cancellation in progress,
# a callback about to complete) before they count as lingering.
LINGERING_TASK_GRACE_SECONDS = 0.2
LINGERING_TASK_POLL_SECONDS = 0.01
_PG_IDENTIFIER_MAX_CHARS = 63
_DB_SUFFIX_HEX_CHARS = 8

_START_HINT = (
    "run the tests through `bash scripts/test.sh`, which installs mosquitto and the "
    "PostgreSQL server (scripts/bootstrap.sh)"
)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"pytest got signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM (a timeout, a cancelled CI job) into an interruption.

    pytest then still tears the session fixtures down, so the servers are stopped; by
    default SIGTERM kills pytest at once and leaves them running as orphans.
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def _start_or_fail(service: MosquittoProcess | PostgresProcess) -> None:
    try:
        service.start()
    except LocalServiceError as exc:
        pytest.fail(f"could not start {service!r}: {exc}\nHint: {_START_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory holding the session's servers (configs, data, logs)."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(services_dir: Path) -> Iterator[MosquittoProcess]:
    """A started private Mosquitto broker, shared by the whole session."""
    broker = MosquittoProcess(services_dir / "mosquitto")
    _start_or_fail(broker)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[PostgresProcess]:
    """A started private PostgreSQL server, shared by the whole session."""
    server = PostgresProcess(services_dir / "postgres")
    _start_or_fail(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mqtt_port(mosquitto: MosquittoProcess) -> int:
    """Port of the session broker on 127.0.0.1 (started again if a test killed it)."""
    if not mosquitto.running:
        _start_or_fail(mosquitto)
    return mosquitto.port


def _database_name(test_name: str) -> str:
    suffix = uuid.uuid4().hex[:_DB_SUFFIX_HEX_CHARS]
    stem = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")
    stem = stem[: _PG_IDENTIFIER_MAX_CHARS - len(suffix) - len("t__")]
    return f"t_{stem}_{suffix}"


@pytest.fixture
def pg_dsn(postgres: PostgresProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database for this test on the session server (dropped after)."""
    if not postgres.running:
        _start_or_fail(postgres)
    name = _database_name(request.node.name)
    yield postgres.create_database(name)
    if postgres.running:
        postgres.drop_database(name)


# ----------------------------------------------------------------- lingering tasks


def _loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    scope = (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")) if marker else None
    return str(scope or item.config.getini("asyncio_default_test_loop_scope") or "function")


@pytest.fixture(autouse=True)
def _no_lingering_tasks(request: pytest.FixtureRequest) -> None:
    """Fail an async test that leaves asyncio tasks running when it and its fixtures end.

    A sync fixture, so that sync tests get no event loop; for a pytest-asyncio test with a
    function-scoped loop it pulls in the async guard below, which then runs in the test's
    own loop. Being requested first, the guard is torn down last: tasks that a fixture
    cancels in its teardown do not count.
    """
    item = request.node
    if isinstance(item, pytest.Item) and is_async_test(item) and _loop_scope(item) == "function":
        request.getfixturevalue("_lingering_task_guard")


def _describe(task: asyncio.Task[object]) -> str:
    return f"{task.get_name()} running {task.get_coro()!r}"


@pytest.fixture
async def _lingering_task_guard() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()

    def lingering() -> list[asyncio.Task[object]]:
        return [
            t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()
        ]

    deadline = loop.time() + LINGERING_TASK_GRACE_SECONDS
    left = lingering()
    while left and loop.time() < deadline:
        await asyncio.sleep(LINGERING_TASK_POLL_SECONDS)
        left = lingering()
    if not left:
        return
    description = "\n  ".join(_describe(t) for t in left)
    for task in left:
        task.cancel()
    await asyncio.wait(left, timeout=LINGERING_TASK_GRACE_SECONDS)
    pytest.fail(
        f"the test left {len(left)} asyncio task(s) running (cancelled now); "
        f"cancel and await them before returning:\n  {description}",
        pytrace=False,
    )
