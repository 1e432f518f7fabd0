"""The shipped broker configuration on a REAL Mosquitto: config/mosquitto/mosquitto.conf
started as is (ports and paths substituted), with the password and ACL files that
`emon broker` writes from the roster, and a TLS certificate made with openssl.

Absence ("never reaches a subscriber") is checked without sleeping: Mosquitto handles one
client's packets in order and fans a publish out before it acknowledges it, so once a
later message or acknowledgement has arrived, an earlier message that was going to be
delivered has been delivered already.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from daemon.localservices import ConfiguredMosquittoProcess
from simulators.scripted_day import HOME_S002
from tests.broker_helpers import (
    CONFIG_DIR,
    BrokerFiles,
    Pki,
    client,
    configured_broker,
    make_broker_files,
    make_pki,
    read_credentials,
    run_emon,
    write_roster,
)
from tests.daemon_helpers import daemon_config, metric, running_daemon

pytestmark = pytest.mark.services

RECEIVE_TIMEOUT_SECONDS = 20.0
STRANGER = "tag-stranger"  # has broker credentials, but is not in the daemon's roster
OWNTRACKS_PHONE = "u900.phone"  # an OwnTracks phone: account u900, owntracks/u900/phone
# More than Mosquitto's default max_queued_messages (1,000), which would drop the rest.
QUEUED_WHILE_OFFLINE = 1_500
DAEMON_PASSWORD_ENV = "EMON_TEST_BROKER_PASSWORD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker_files(tmp_path_factory: pytest.TempPathFactory) -> BrokerFiles:
    """Files from the example roster plus one device the daemon's roster lacks (a roster
    that drifted: the daemon must still refuse that device)."""
    base = tmp_path_factory.mktemp("broker-files")
    roster = write_roster(
        base / "config", add_devices={"s-stranger": STRANGER, "s-phone": OWNTRACKS_PHONE}
    )
    return make_broker_files(roster, base)


@pytest.fixture
def broker(
    tmp_path: Path, broker_files: BrokerFiles, pki: Pki
) -> Iterator[ConfiguredMosquittoProcess]:
    """A fresh broker per test (it starts in ~50 ms): no session or queue leaks between tests."""
    with configured_broker(tmp_path / "broker", broker_files, pki) as process:
        yield process


def login(
    broker: ConfiguredMosquittoProcess, files: BrokerFiles, pki: Pki, account: str, **kw: Any
) -> aiomqtt.Client:
    return client(broker, account, files.credentials[account], ca_cert=pki.ca_cert, **kw)


async def receive_until(
    subscriber: aiomqtt.Client, last_payload: bytes
) -> list[tuple[str, bytes]]:
    """Messages up to and including the one whose payload is `last_payload`."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
        async for message in subscriber.messages:
            assert isinstance(message.payload, bytes)
            got.append((message.topic.value, message.payload))
            if message.payload == last_payload:
                return got
    raise AssertionError("subscription ended")


async def wait_disconnected(connection: aiomqtt.Client) -> None:
    """Return when the broker closes this client's connection: message iteration then
    raises MqttError, which propagates."""
    async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
        async for _ in connection.messages:
            pass


async def assert_disconnected(connection: aiomqtt.Client) -> None:
    with pytest.raises(aiomqtt.MqttError):
        await wait_disconnected(connection)


def ping(at: datetime | None = None, **fields: Any) -> bytes:
    """A location payload at home-s002's centre (no zone rule fires on it); `fields`
    override or add fields."""
    at = at or datetime.now(UTC)
    return json.dumps(
        {"ts": at.isoformat(), "lat": HOME_S002.lat, "lon": HOME_S002.lon, "acc": 6.0, **fields}
    ).encode()


# ---------------------------------------------------------------------- who may connect


async def test_tls_connection_works_with_the_ca_only(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    password = broker_files.credentials["tag-s001"]
    async with client(broker, "tag-s001", password, ca_cert=pki.ca_cert) as device:
        await device.publish("emon/v1/devices/tag-s001/location", ping(), qos=1)
    # The system's CAs, or another CA, do not vouch for this broker: the device refuses it.
    for ca_cert in (None, pki.other_ca_cert):
        with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
            async with client(broker, "tag-s001", password, ca_cert=ca_cert):
                pass
    # Plain MQTT spoken to the TLS port gets nowhere (no answer: a short timeout).
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", broker.tls_port, username="tag-s001", password=password, timeout=1
        ):
            pass


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "loopback-plain"])
async def test_no_password_no_connection(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki, tls: bool
) -> None:
    right = broker_files.credentials["tag-s001"]
    refused = [
        (None, None),  # anonymous
        ("tag-s001", None),  # no password
        ("tag-s001", "wrong"),
        ("tag-s001", broker_files.credentials["tag-s002"]),  # another device's password
        ("tag-unknown", right),  # no such account
    ]
    for account, password in refused:
        with pytest.raises(aiomqtt.MqttError):
            async with client(broker, account, password, ca_cert=pki.ca_cert, tls=tls,
                              identifier=account or "anonymous"):
                pass
    async with client(broker, "tag-s001", right, ca_cert=pki.ca_cert, tls=tls):
        pass


# ---------------------------------------------------------------------- what each may do


async def test_device_cannot_publish_as_another_device(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    async with (
        login(broker, broker_files, pki, "emon-daemon") as daemon_account,
        login(broker, broker_files, pki, "tag-s001") as device_a,
        login(broker, broker_files, pki, "tag-s002") as device_b,
    ):
        for topic in ("emon/v1/devices/+/location", "emon/v1/devices/+/event", "owntracks/+/+"):
            await daemon_account.subscribe(topic, qos=1)
        own, spoof, spoof_event = ping(acc=1.0), ping(acc=2.0), b'{"type":"strap_open"}'
        await device_a.publish("emon/v1/devices/tag-s001/location", own, qos=1)
        # An OwnTracks user publishes for its own phones, and only there.
        async with login(broker, broker_files, pki, "u900") as phone_user:
            await phone_user.publish("owntracks/u900/phone", b'{"_type":"location"}', qos=1)
            await phone_user.publish("owntracks/u901/phone", spoof, qos=1)
            await phone_user.publish("emon/v1/devices/tag-s002/location", spoof, qos=1)
        await device_a.publish("owntracks/u900/phone", spoof, qos=1)
        # A's spoofs of B's topics (a stolen tag pretending to be at home for someone else),
        # and of topics of nobody at all, are acknowledged and dropped.
        await device_a.publish("emon/v1/devices/tag-s002/location", spoof, qos=1)
        await device_a.publish("emon/v1/devices/tag-s002/event", spoof_event, qos=1)
        await device_a.publish("emon/v1/alerts/s002", b'{"forged": true}', qos=1)
        # Nor may a service account speak for a device.
        async with login(broker, broker_files, pki, "alerts-reader") as reader:
            await reader.publish("emon/v1/devices/tag-s002/location", spoof, qos=1)
        marker = ping(acc=3.0)
        await device_b.publish("emon/v1/devices/tag-s002/location", marker, qos=1)
        got = await receive_until(daemon_account, marker)
    assert got == [
        ("emon/v1/devices/tag-s001/location", own),
        ("owntracks/u900/phone", b'{"_type":"location"}'),
        ("emon/v1/devices/tag-s002/location", marker),
    ]


async def test_device_reads_nothing_alerts_reader_reads_alerts_only(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    async with (
        login(broker, broker_files, pki, "emon-daemon") as daemon_account,
        login(broker, broker_files, pki, "tag-s001") as device,
        login(broker, broker_files, pki, "alerts-reader") as reader,
    ):
        # Mosquitto 2.0 grants the subscription; the ACL is applied to every delivery.
        for topic in ("emon/v1/alerts/#", "emon/v1/devices/#", "emon/v1/deadletter/#", "#"):
            await device.subscribe(topic, qos=1)
        await reader.subscribe("#", qos=1)
        alert = b'{"alert_id": "a1", "subject_id": "s001"}'
        await daemon_account.publish("emon/v1/alerts/s001", alert, qos=1)
        await daemon_account.publish("emon/v1/deadletter/tag-s001", b'{"reason": "x"}', qos=1)
        other_ping = ping()
        async with login(broker, broker_files, pki, "tag-s002") as device_b:
            await device_b.publish("emon/v1/devices/tag-s002/location", other_ping, qos=1)
        # One acknowledged round trip each: anything queued for them has arrived by now.
        await device.publish("emon/v1/devices/tag-s001/event", b"{}", qos=1)
        await reader.publish("emon/v1/alerts/s001", b"not allowed to write", qos=1)
        assert len(device.messages) == 0
        assert len(reader.messages) == 1
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            message = await anext(aiter(reader.messages))
        assert (message.topic.value, message.payload) == ("emon/v1/alerts/s001", alert)


async def test_a_device_cannot_take_over_the_daemons_session(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    """With client ids free, any device could connect as client id `emon-daemon`: the
    broker would disconnect the daemon and hand the device its session. The shipped config
    replaces every client id by the account name."""
    async with (
        login(broker, broker_files, pki, "emon-daemon") as daemon_account,
        login(broker, broker_files, pki, "alerts-reader") as reader,
    ):
        await reader.subscribe("emon/v1/alerts/#", qos=1)
        async with login(broker, broker_files, pki, "tag-s001", identifier="emon-daemon") as dev:
            await dev.publish("emon/v1/devices/tag-s001/event", b"{}", qos=1)
            body = b'{"still": "connected"}'
            await daemon_account.publish("emon/v1/alerts/s001", body, qos=1)
            assert await receive_until(reader, body) == [("emon/v1/alerts/s001", body)]


async def test_oversized_packet_cuts_the_sender_off(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    """max_packet_size: the sender is disconnected, and the message reaches nobody."""
    topic = "emon/v1/devices/tag-s001/location"
    async with login(broker, broker_files, pki, "emon-daemon") as daemon_account:
        await daemon_account.subscribe("emon/v1/devices/+/location", qos=1)

        async def send_and_wait_to_be_cut_off() -> None:
            # The publish itself may already fail, or time out, as the broker cuts in.
            async with login(broker, broker_files, pki, "tag-s001", timeout=3) as device:
                await device.publish(topic, b"x" * 70_000, qos=0)
                await wait_disconnected(device)

        with pytest.raises(aiomqtt.MqttError):
            await send_and_wait_to_be_cut_off()
        marker = ping(acc=2.0)
        async with login(broker, broker_files, pki, "tag-s001") as device:
            await device.publish(topic, marker, qos=1)
        assert await receive_until(daemon_account, marker) == [(topic, marker)]


async def test_officers_read_only_their_subjects_alerts_and_their_own_channel(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    """off-li has s001 and s002, off-chen s003; sup-wang supervises both."""
    async with (
        login(broker, broker_files, pki, "emon-daemon") as daemon_account,
        login(broker, broker_files, pki, "off-li") as li,
        login(broker, broker_files, pki, "off-chen") as chen,
        login(broker, broker_files, pki, "sup-wang") as wang,
    ):
        await daemon_account.subscribe("emon/v1/commands/+", qos=1)
        for officer in (li, chen, wang):
            await officer.subscribe("#", qos=1)  # granted; the ACL filters deliveries
        for subject in ("s001", "s002", "s003"):
            await daemon_account.publish(f"emon/v1/alerts/{subject}", subject.encode(), qos=1)
        await daemon_account.publish("emon/v1/officers/off-chen/notifications", b"n", qos=1)
        await daemon_account.publish("emon/v1/commands/off-li/reply", b"r", qos=1)
        # off-chen may command only as off-chen.
        await chen.publish("emon/v1/commands/off-li", b"forged", qos=1)
        await chen.publish("emon/v1/commands/off-chen", b"own", qos=1)
        assert await receive_until(daemon_account, b"own") == [
            ("emon/v1/commands/off-chen", b"own")
        ]
        got: dict[str, set[str]] = {}
        for name, officer in (("off-li", li), ("off-chen", chen), ("sup-wang", wang)):
            await officer.publish(f"emon/v1/commands/{name}", b"{}", qos=1)  # a round trip
            got[name] = set()
            while len(officer.messages):
                message = await anext(aiter(officer.messages))
                got[name].add(message.topic.value)
    assert got == {
        "off-li": {"emon/v1/alerts/s001", "emon/v1/alerts/s002",
                   "emon/v1/commands/off-li/reply"},
        "off-chen": {"emon/v1/alerts/s003", "emon/v1/officers/off-chen/notifications"},
        "sup-wang": {"emon/v1/alerts/s001", "emon/v1/alerts/s002", "emon/v1/alerts/s003"},
    }


# ---------------------------------------------------------------------- roster changes


async def test_regenerated_files_take_effect_on_sighup(
    tmp_path: Path, pki: Pki
) -> None:
    config = write_roster(tmp_path / "config")
    files = make_broker_files(config, tmp_path / "files")
    with configured_broker(tmp_path / "broker", files, pki) as broker:
        async with login(broker, files, pki, "tag-s001") as leaving:
            # The roster changes: s001 leaves, s900 arrives; files regenerated, SIGHUP.
            shutil.rmtree(config)
            write_roster(config, add_devices={"s900": "tag-s900"}, drop_subjects=("s001",))
            creds = tmp_path / "files" / "new.txt"
            for command in (
                ["acl", "--out", str(files.acl_file)],
                ["passwords", "--out", str(files.password_file), "--credentials", str(creds)],
            ):
                code, _, err = run_emon("broker", *command[:1], "--config", str(config),
                                        *command[1:])
                assert code == 0, err
            new_password = read_credentials(creds)["tag-s900"]
            broker.reload()
            # The revoked device is cut off at once, and cannot come back.
            await assert_disconnected(leaving)
        with pytest.raises(aiomqtt.MqttError):
            async with login(broker, files, pki, "tag-s001"):
                pass
        # The newcomer publishes on its own topic; the others kept their passwords.
        async with (
            login(broker, files, pki, "emon-daemon") as daemon_account,
            client(broker, "tag-s900", new_password, ca_cert=pki.ca_cert) as newcomer,
            login(broker, files, pki, "tag-s002") as staying,
        ):
            await daemon_account.subscribe("emon/v1/devices/+/location", qos=1)
            first, second = ping(acc=1.0), ping(acc=2.0)
            await newcomer.publish("emon/v1/devices/tag-s900/location", first, qos=1)
            await staying.publish("emon/v1/devices/tag-s002/location", second, qos=1)
            got = await receive_until(daemon_account, second)
        assert [payload for _, payload in got] == [first, second]


# ---------------------------------------------------------------------- queue and persistence


async def test_daemon_queue_outlasts_default_limit_and_broker_restart(
    broker: ConfiguredMosquittoProcess, broker_files: BrokerFiles, pki: Pki
) -> None:
    """The daemon's persistent session, offline, keeps more than Mosquitto's default 1,000
    messages, and keeps them across a clean broker restart (persistence on)."""
    async with login(broker, broker_files, pki, "emon-daemon", clean_session=False) as session:
        await session.subscribe("emon/v1/devices/+/location", qos=1)
    payloads = [f'{{"n": {i}}}'.encode() for i in range(QUEUED_WHILE_OFFLINE)]
    # Over the loopback listener: this test is about the queue, not TLS throughput.
    async with login(broker, broker_files, pki, "tag-s001", tls=False) as device:
        for payload in payloads:
            await device.publish("emon/v1/devices/tag-s001/location", payload, qos=1)
    broker.restart()
    async with login(broker, broker_files, pki, "emon-daemon", clean_session=False) as session:
        got = await receive_until(session, payloads[-1])
    assert [payload for _, payload in got] == payloads


# ---------------------------------------------------------------------- the daemon itself


def hostile_messages(now: datetime) -> list[tuple[str, str, bytes]]:
    """What a compromised device with valid credentials can send on its own topics."""
    def event(**fields: Any) -> bytes:
        return json.dumps({"ts": now.isoformat(), "type": "strap_open", **fields}).encode()

    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    return [
        ("missing_field", "location", b'{"lat": "x"}'),
        ("payload_too_large", "location", ping(pad="p" * 5000)),
        ("not_json", "location", b'{"ts": 1, "lat": NaN, "lon": 1, "acc": 1}'),
        ("not_json", "location", b'{"ts": "\xff\xfe"}'),
        ("not_json", "location", ping(nested=deep)),
        ("not_json", "location", ping(note="a\u0000b")),
        # These three passed the decoder before: an infinite extra field made the store
        # refuse the observation inside the reader (the daemon died, and the message,
        # never acknowledged, came back on restart); a lone surrogate in an event
        # attribute made the alert unpublishable (the same); U+0000 in one made the
        # alert unrecordable (retried for ever, blocking every later alert record).
        ("non_finite", "location", ping(speed=1).replace(b'"speed": 1', b'"speed": 1e400')),
        ("not_json", "event", event(x="\ud800")),
        ("not_json", "event", event(x="\u0000")),
        ("bad_type", "location", ping(lat="22.5")),
        ("out_of_range", "location", ping(lat=91)),
        ("out_of_range", "location", ping(lat=10**400)),
        ("ts_in_future", "location", ping(now + timedelta(days=1))),
        ("ts_too_old", "location", ping(now - timedelta(days=40))),
        ("bad_timestamp", "location", ping(ts="yesterday")),
        ("unknown_event_type", "event", event(type="alien")),
    ]


async def test_daemon_over_tls_refuses_strangers_and_hostile_input(
    broker: ConfiguredMosquittoProcess,
    broker_files: BrokerFiles,
    pki: Pki,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real daemon with its own account over TLS: it reads device topics and writes
    alerts; a device the roster lacks is counted as unknown_device and dead-lettered,
    never stored; a compromised device's hostile messages are each counted by reason
    and dead-lettered, and the daemon goes on."""
    monkeypatch.setenv(DAEMON_PASSWORD_ENV, broker_files.credentials["emon-daemon"])
    loaded = daemon_config(
        CONFIG_DIR,
        dsn=pg_dsn,
        mqtt={
            "host": "127.0.0.1", "port": broker.tls_port, "username": "emon-daemon",
            "password_env": DAEMON_PASSWORD_ENV, "tls_ca_file": pki.ca_cert,
        },
    )  # fmt: skip
    assert STRANGER not in loaded.core.devices
    now = datetime.now(UTC)
    hostile = hostile_messages(now)
    expected: dict[str, int] = {"unknown_device": 1}
    for reason, _, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    before = {reason: metric("emon_messages_rejected_total", reason=reason) for reason in expected}
    processed_before = metric("emon_observations_processed_total", kind="LocationFix")

    async with (
        running_daemon(loaded) as daemon,
        login(broker, broker_files, pki, "alerts-reader") as alerts,
        login(broker, broker_files, pki, "operator") as deadletters,
        login(broker, broker_files, pki, STRANGER) as stranger,
        login(broker, broker_files, pki, "tag-s002") as compromised,
        login(broker, broker_files, pki, "tag-s001") as honest,
    ):
        await alerts.subscribe("emon/v1/alerts/#", qos=1)
        await deadletters.subscribe("emon/v1/deadletter/#", qos=1)
        await stranger.publish(f"emon/v1/devices/{STRANGER}/location", ping(), qos=1)
        for _, channel, payload in hostile:
            await compromised.publish(f"emon/v1/devices/tag-s002/{channel}", payload, qos=1)
        good = ping(now - timedelta(seconds=5))
        await compromised.publish("emon/v1/devices/tag-s002/location", good, qos=1)
        strap = json.dumps({"ts": now.isoformat(), "type": "strap_open"}).encode()
        await honest.publish("emon/v1/devices/tag-s001/event", strap, qos=1)

        letters: list[dict[str, Any]] = []
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            async for message in deadletters.messages:
                assert isinstance(message.payload, bytes)
                letters.append({**json.loads(message.payload), "letter_topic": message.topic.value})
                if len(letters) == 1 + len(hostile):
                    break
            alert_message = await anext(aiter(alerts.messages))
        assert isinstance(alert_message.payload, bytes)
        alert = json.loads(alert_message.payload)
        assert daemon.open_alert_count == 1

    assert letters[0]["letter_topic"] == f"emon/v1/deadletter/{STRANGER}"
    assert letters[0]["topic"] == f"emon/v1/devices/{STRANGER}/location"
    assert letters[0]["reason"] == "unknown_device"
    assert [letter["reason"] for letter in letters[1:]] == [r for r, _, _ in hostile]
    assert {letter["letter_topic"] for letter in letters[1:]} == {"emon/v1/deadletter/tag-s002"}
    after = {reason: metric("emon_messages_rejected_total", reason=reason) for reason in expected}
    assert {reason: after[reason] - before[reason] for reason in expected} == expected
    assert metric("emon_observations_processed_total", kind="LocationFix") - processed_before == 1
    assert (alert_message.topic.value, alert["rule"], alert["transition"]) == (
        "emon/v1/alerts/s001", "strap_open", "opened"
    )

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT device_id, count(*) FROM pings GROUP BY device_id")
        assert await cursor.fetchall() == [("tag-s002", 1)]
        cursor = await conn.execute("SELECT count(*) FROM store_rejects")
        assert await cursor.fetchone() == (0,)
        cursor = await conn.execute("SELECT subject_id, rule FROM alerts")
        assert await cursor.fetchall() == [("s001", "strap_open")]
