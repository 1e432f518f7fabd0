"""Real Mosquitto and PostgreSQL processes from daemon.localservices, and conftest's checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import aiomqtt
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon import localservices
from daemon.localservices import LocalServiceError, MosquittoProcess, PostgresProcess

pytestmark = pytest.mark.services

TEST_TIMEOUT_SECONDS = 30.0
# More than mosquitto's default max_queued_messages (1000), which would drop the rest.
DEEP_QUEUE_MESSAGES = 1200
SESSION_EXPIRY_SECONDS = 3600
AUTOSAVE_WAIT_SECONDS = 10.0
AUTOSAVE_POLL_SECONDS = 0.05


def _subscriber(broker: MosquittoProcess, client_id: str, protocol: str) -> aiomqtt.Client:
    """A client whose session (subscriptions, queued QoS 1 messages) outlives its connection."""
    if protocol == "v5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        return aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
        )
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
    )


async def _receive(client: aiomqtt.Client, count: int) -> list[bytes]:
    payloads: list[bytes] = []
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        async for message in client.messages:
            assert isinstance(message.payload, bytes | bytearray)
            payloads.append(bytes(message.payload))
            if len(payloads) == count:
                break
    return payloads


async def _publish_all(broker: MosquittoProcess, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"pub-{uuid.uuid4().hex}"
    ) as pub:
        for payload in payloads:
            await pub.publish(topic, payload, qos=1)  # returns once the broker PUBACKed


# ------------------------------------------------------------------------ PostgreSQL


def test_postgres_select_one(postgres: PostgresProcess) -> None:
    assert postgres.dsn == f"postgresql://emon@127.0.0.1:{postgres.port}/emon"
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute("SELECT current_user, current_setting('is_superuser')").fetchone()
        assert row == ("emon", "on")


async def test_pg_dsn_is_a_fresh_database(pg_dsn: str, postgres: PostgresProcess) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT current_database()")
        row = await cur.fetchone()
        assert row is not None
        assert row[0].startswith("t_test_pg_dsn_is_a_fresh_database_")
        assert pg_dsn == postgres.dsn_for(row[0])
        cur = await conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert await cur.fetchone() == (0,)


def test_postgres_stop_start_keeps_data(postgres: PostgresProcess, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t VALUES (42)")
    port = postgres.port
    postgres.stop()
    assert not postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2).close()
    postgres.start()
    assert postgres.running
    assert postgres.port == port
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT i FROM t").fetchall() == [(42,)]


def test_postgres_kill_keeps_every_acknowledged_commit(
    postgres: PostgresProcess, pg_dsn: str
) -> None:
    """SIGKILL right after the commits: all must survive (synchronous_commit must be on)."""
    rows = 200
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        for i in range(rows):
            conn.execute("INSERT INTO t VALUES (%s)", (i,))
        postgres.kill()
    assert not postgres.running
    postgres.start()  # crash recovery
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (rows,)


def test_postgres_create_and_drop_database(postgres: PostgresProcess) -> None:
    name = f"t_create_drop_{uuid.uuid4().hex[:8]}"
    dsn = postgres.create_database(name)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
    postgres.drop_database(name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(dsn).close()
    with pytest.raises(ValueError, match="must match"):
        postgres.create_database("Robert'); DROP TABLE students;--")


def test_postgres_reuses_data_and_stops_a_leftover_server(tmp_path: Path) -> None:
    first = PostgresProcess(tmp_path / "pg")
    first.start()
    with psycopg.connect(first.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (i int)")
    # A second owner of the same run directory (the demo run again after a crash): the
    # leftover server is stopped, the data directory is reused, the new port is used.
    first_pid = first.pid
    assert first_pid is not None
    second = PostgresProcess(tmp_path / "pg")
    try:
        second.start()
        assert not localservices._pid_alive(first_pid)
        assert second.pid != first_pid
        with psycopg.connect(second.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        second.stop()
        first.stop()
    assert not second.running


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another user")
def test_postgres_as_root_under_a_private_dir_uses_a_stand_in(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # like /tmp/pytest-of-root: user postgres cannot enter
    run_dir = private / "pg"
    with PostgresProcess(run_dir) as server:
        home = server.home
        assert home.parent == localservices.POSTGRES_RELOCATION_ROOT
        assert (run_dir / "postgres-home").resolve() == home
        assert server.data_dir == home / "data"
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE old (i int)")
        assert oct(private.stat().st_mode & 0o777) == oct(0o700)  # left alone
    # A new run directory of the same name gets a new cluster, not the old one.
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    with PostgresProcess(run_dir) as server:
        assert server.home == home
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT to_regclass('old')").fetchone() == (None,)
    # Once its run directory is gone, a stand-in is swept away.
    shutil.rmtree(run_dir)
    localservices._sweep_stand_ins(keep=tmp_path)
    assert not home.exists()


def test_postgres_missing_binaries_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(localservices.PG_BINDIR_ENV, str(tmp_path))
    with pytest.raises(LocalServiceError, match="holds no initdb"):
        PostgresProcess(tmp_path / "pg").start()


# ------------------------------------------------------------------------- Mosquitto


async def test_mqtt_qos1_publish_is_received(mosquitto: MosquittoProcess, mqtt_port: int) -> None:
    assert mqtt_port == mosquitto.port
    topic = f"emon/test/{uuid.uuid4().hex}"
    async with aiomqtt.Client(
        mosquitto.host, mqtt_port, identifier=f"sub-{uuid.uuid4().hex}"
    ) as sub:
        await sub.subscribe(topic, qos=1)
        await _publish_all(mosquitto, topic, [b"ping-1"])
        assert await _receive(sub, 1) == [b"ping-1"]


@pytest.mark.parametrize("protocol", ["v311", "v5"])
async def test_restart_keeps_queued_qos1_messages(tmp_path: Path, protocol: str) -> None:
    """Messages published while a persistent subscriber is away survive a broker restart.

    More messages than mosquitto's default queue limit: all must arrive, in order.
    """
    client_id = f"emon-test-{protocol}-{uuid.uuid4().hex[:8]}"
    topic = f"emon/test/{uuid.uuid4().hex}"
    payloads = [f"ping-{i}".encode() for i in range(DEEP_QUEUE_MESSAGES)]
    with MosquittoProcess(tmp_path / "mqtt") as broker:
        async with _subscriber(broker, client_id, protocol) as sub:
            await sub.subscribe(topic, qos=1)
        await _publish_all(broker, topic, payloads)
        await asyncio.to_thread(broker.restart)
        async with _subscriber(broker, client_id, protocol) as sub:  # no new SUBSCRIBE
            assert await _receive(sub, len(payloads)) == payloads


async def test_kill_keeps_autosaved_queue(tmp_path: Path) -> None:
    """After SIGKILL, the broker restores what its last autosave held."""
    client_id = f"emon-test-kill-{uuid.uuid4().hex[:8]}"
    topic = f"emon/test/{uuid.uuid4().hex}"
    payloads = [b"a", b"b", b"c"]
    with MosquittoProcess(tmp_path / "mqtt") as broker:
        async with _subscriber(broker, client_id, "v311") as sub:
            await sub.subscribe(topic, qos=1)
        await _publish_all(broker, topic, payloads)
        published_ns = time.time_ns()
        db = tmp_path / "mqtt" / "persistence" / "mosquitto.db"
        for _ in range(int(AUTOSAVE_WAIT_SECONDS / AUTOSAVE_POLL_SECONDS)):
            if db.exists() and db.stat().st_mtime_ns > published_ns:
                break
            await asyncio.sleep(AUTOSAVE_POLL_SECONDS)
        else:
            pytest.fail(f"mosquitto did not autosave {db} within {AUTOSAVE_WAIT_SECONDS}s")
        pid = broker.pid
        broker.kill()
        assert not broker.running
        broker.start()
        assert broker.pid != pid
        async with _subscriber(broker, client_id, "v311") as sub:
            assert await _receive(sub, len(payloads)) == payloads


def test_mosquitto_config_and_root(tmp_path: Path) -> None:
    with MosquittoProcess(tmp_path / "mqtt") as broker:
        config = broker.config_path.read_text(encoding="utf-8").splitlines()
        assert f"listener {broker.port} 127.0.0.1" in config
        assert "max_queued_messages 1000000" in config
        assert "max_queued_bytes 0" in config
        assert "persistence true" in config
        assert broker.pid is not None
        # Still running as whoever started it: as root, mosquitto did not switch users.
        status = Path(f"/proc/{broker.pid}/status").read_text(encoding="utf-8")
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] == str(os.geteuid())
    assert not broker.running


def test_mosquitto_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = MosquittoProcess(tmp_path / "mqtt", port=port)  # a fixed port: no retry
        with pytest.raises(LocalServiceError, match="exited") as info:
            broker.start()
    assert "Address already in use" in info.value.log_tail
    assert not broker.running


def test_mosquitto_auto_port_retries_when_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_free_port = localservices.find_free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(
            localservices, "find_free_port", lambda: next(ports, None) or real_find_free_port()
        )
        with MosquittoProcess(tmp_path / "mqtt") as broker:
            assert broker.port != taken
            assert broker.running


def test_mosquitto_stops_a_leftover_broker(tmp_path: Path) -> None:
    first = MosquittoProcess(tmp_path / "mqtt")
    first.start()
    second = MosquittoProcess(tmp_path / "mqtt")
    try:
        second.start()
        assert not first.running
        assert second.running
    finally:
        second.stop()
        first.stop()


def test_mosquitto_missing_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(localservices, "MOSQUITTO_FALLBACK_BINARY", tmp_path / "mosquitto")
    with pytest.raises(LocalServiceError, match="apt-get install mosquitto"):
        MosquittoProcess(tmp_path / "mqtt").start()


# ------------------------------------------------------------------ lingering tasks

_INNER_TESTS = """
import asyncio
import contextlib

import pytest


async def test_leaky():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="leaky-sleeper")


async def test_clean():
    task = asyncio.create_task(asyncio.sleep(3600))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def background():
    task = asyncio.create_task(asyncio.sleep(3600))
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_task_owned_by_a_fixture(background):
    assert not background.done()


def test_sync():
    assert asyncio.run(asyncio.sleep(0, result=1)) == 1
"""


def test_lingering_task_check(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text(encoding="utf-8"))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_inner=_INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaky*", "*leaky-sleeper*"])


_INNER_SIGTERM_TEST = """
import os
import signal
from pathlib import Path


def test_terminated(mosquitto):
    Path(os.environ["EMON_TEST_PID_FILE"]).write_text(str(mosquitto.pid))
    os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_to_pytest_still_stops_the_servers(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    monkeypatch.setenv("EMON_TEST_PID_FILE", str(pid_file))
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_inner=_INNER_SIGTERM_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    pid = int(pid_file.read_text(encoding="utf-8"))
    try:
        assert result.ret == pytest.ExitCode.INTERRUPTED
        assert not localservices._pid_alive(pid), "the broker outlived its pytest session"
    finally:
        if localservices._pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
