"""The fleet simulator and the load generator: determinism, realism, wire validity, config,
live publishing and the load generator at a small rate against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path

import aiomqtt
import pytest

from daemon.configfiles import load_config
from daemon.localservices import MosquittoProcess
from daemon.replay import replay_lines
from daemon.wire import decode_any
from geofence.observation import LocationFix
from simulators.cli_fleet import write_fleet_config
from simulators.devices import (
    BurstOrder,
    Environment,
    GnssModel,
    Protocol,
    Uplink,
    rayleigh_error_m,
)
from simulators.fleet import FleetStats, build_fleet, fleet_messages
from simulators.load import LoadPlan, connect_packet, publish_packet, run_load
from simulators.publisher import publish_stream
from simulators.scenario import distance_m
from simulators.scripted_day import LonLat, SimMessage, write_jsonl

DAY = date(2026, 11, 16)  # a Monday
SUBJECTS = 4

@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker of this test alone: the traffic of simulators (thousands of QoS 1 messages)
    must not queue up in other tests' persistent sessions on the session-wide broker."""
    with MosquittoProcess(tmp_path / "mosquitto") as broker:
        yield broker



@pytest.fixture(scope="module")
def fleet_run() -> tuple[list[SimMessage], FleetStats]:
    fleet = build_fleet(SUBJECTS, seed=5)
    stats = FleetStats()
    return list(fleet_messages(fleet, DAY, days=2, stats=stats)), stats


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    first = list(islice(fleet_messages(build_fleet(3, seed=9), DAY), 500))
    again = list(islice(fleet_messages(build_fleet(3, seed=9), DAY), 500))
    other = list(islice(fleet_messages(build_fleet(3, seed=10), DAY), 500))
    assert first == again
    assert first != other


def test_messages_arrive_in_order_and_decode(
    fleet_run: tuple[list[SimMessage], FleetStats],
) -> None:
    messages, stats = fleet_run
    fleet = build_fleet(SUBJECTS, seed=5)
    assert stats.counts["messages"] == len(messages)
    ats = [m.at for m in messages]
    assert ats == sorted(ats)
    per_device_ts: dict[str, list[datetime]] = defaultdict(list)
    sources: Counter[str] = Counter()
    accuracies: list[float] = []
    for message in messages:
        observation = decode_any(message.topic, json.dumps(message.payload).encode(),
                             message.at)
        if isinstance(observation, LocationFix):
            per_device_ts[observation.device_id].append(observation.ts)
            sources[observation.source.value] += 1
            accuracies.append(observation.accuracy_m)
    expected_devices = {s.wearable_id for s in fleet.subjects} | {
        s.phone_id(Protocol.OWNTRACKS) for s in fleet.subjects}
    assert set(per_device_ts) == expected_devices
    # Store-and-forward bursts and duplicates: some fixes arrive out of event-time order.
    out_of_order = sum(
        1 for stamps in per_device_ts.values() for a, b in pairwise(stamps) if b <= a
    )
    assert out_of_order > 0
    assert stats.counts["duplicates"] > 0
    assert stats.counts["bursts"] > 0
    # Mostly GNSS, indoors often Wi-Fi, cold starts and the metro give a few cell fixes.
    assert sources["gnss"] > sources["wifi"] > 0
    gnss_share_5_100 = sum(5 <= a <= 100 for a in accuracies) / len(accuracies)
    assert gnss_share_5_100 > 0.9
    assert stats.counts["event_charger_connected"] > 0


def test_routine_goes_to_work_and_is_home_at_night(
    fleet_run: tuple[list[SimMessage], FleetStats],
) -> None:
    messages, _ = fleet_run
    fleet = build_fleet(SUBJECTS, seed=5)
    workers = [s for s in fleet.subjects if s.work is not None]
    assert workers, "seed 5 should have a worker"
    subject = workers[0]
    tz = fleet.tz
    noon, night = [], []
    for m in messages:
        payload = m.payload
        if m.topic != f"emon/v1/devices/{subject.wearable_id}/location":
            continue
        local = datetime.fromisoformat(payload["ts"]).astimezone(tz)
        here = LonLat(payload["lon"], payload["lat"])
        if local.date() == DAY and 14 <= local.hour < 16:
            assert subject.work is not None
            noon.append(distance_m(here, subject.work))
        if local.date() == DAY and (local.hour >= 23 or local.hour < 5):
            night.append(distance_m(here, subject.home))
    assert noon
    assert night
    # Indoors the fixes drift, but the median is near the place.
    assert sorted(noon)[len(noon) // 2] < 150
    assert sorted(night)[len(night) // 2] < 150


def test_gnss_model_accuracy_and_outliers() -> None:
    model = GnssModel(random.Random(1))
    here = LonLat(114.05, 22.54)
    open_sky = [model.measure(here, Environment.OPEN_SKY) for _ in range(2000)]
    assert all(f is not None and 4 <= f.accuracy_m <= 10 for f in open_sky)
    within = sum(distance_m(f.position, here) <= f.accuracy_m for f in open_sky if f)
    assert 0.6 < within / 2000 < 0.76  # stated accuracy is the ~68 % radius
    urban = [model.measure(here, Environment.URBAN) for _ in range(5000)]
    outliers = sum(1 for f in urban if f and distance_m(f.position, here) > 300)
    assert 5 <= outliers <= 40  # ~0.4 % street-canyon outliers claiming good accuracy
    model.cold_start()
    first = model.measure(here, Environment.OPEN_SKY)
    assert first is not None
    assert first.source == "cell"
    assert first.accuracy_m >= 300
    assert rayleigh_error_m(random.Random(2), 10.0) >= 0


def test_uplink_store_and_forward_newest_first_and_duplicates() -> None:
    uplink = Uplink(random.Random(3), duplicate_rate=0.0, burst_order=BurstOrder.NEWEST_FIRST)
    t0 = datetime(2026, 11, 16, tzinfo=UTC)
    uplink.lose_coverage()
    for i in range(5):
        uplink.send(t0 + timedelta(minutes=i), "t", {"i": i})
    uplink.regain_coverage(t0 + timedelta(minutes=10))
    uplink.send(t0 + timedelta(minutes=10), "t", {"i": 10})
    order = [m.payload["i"] for m in uplink.due(None)]
    assert order == [4, 3, 2, 1, 0, 10]
    dup = Uplink(random.Random(4), duplicate_rate=1.0)
    dup.send(t0, "t", {"i": 1})
    assert [m.payload for m in dup.due(None)] == [{"i": 1}, {"i": 1}]


def test_written_config_accepts_every_device_and_replay_refuses_nothing(
    tmp_path: Path, fleet_run: tuple[list[SimMessage], FleetStats]
) -> None:
    messages, _ = fleet_run
    fleet = build_fleet(SUBJECTS, seed=5)
    write_fleet_config(fleet, tmp_path / "cfg")
    loaded = load_config(tmp_path / "cfg", env={})
    assert len(loaded.core.subjects) == SUBJECTS
    assert all(s.curfew is not None for s in loaded.core.subjects.values())
    buffer = io.StringIO()
    write_jsonl(messages, buffer)
    out = io.StringIO()
    stats = replay_lines(io.StringIO(buffer.getvalue()), loaded.core,
                         loaded.settings.tick_interval_seconds, out, progress=None)
    assert stats.bad_lines == 0
    assert dict(stats.rejections) == {}, "a realistic fleet must not be refused"
    assert set(stats.ignored) <= {"owntracks_lwt"}
    opened = [json.loads(line) for line in out.getvalue().splitlines()
              if json.loads(line)["transition"] == "opened"]
    # The fleet is compliant: a zone alert is a false alert; never a tamper or a zone the
    # subject never went near. The device conditions it simulates (batteries running down,
    # dead batteries, coverage outages) are true alerts of the issue-4 device rules.
    # A tag silent (coverage outage, dead battery) while the phone reports is, by the
    # issue-5 definition, a person-device separation as well: true too.
    device_conditions = {"battery_low", "battery_critical", "power_off", "device_silent",
                         "gnss_lost", "person_device_separation"}
    assert {a["rule"] for a in opened} <= {"curfew_away", "boundary_exit"} | device_conditions


@pytest.mark.services
async def test_fleet_published_live_and_received(private_broker: MosquittoProcess) -> None:
    messages = list(islice(fleet_messages(build_fleet(2, seed=1), DAY), 300))
    received: list[str] = []
    broker = private_broker
    async with aiomqtt.Client(broker.host, broker.port, identifier="fleet-watch") as watch:
        await watch.subscribe("emon/v1/devices/#", qos=1)
        await watch.subscribe("owntracks/+/+", qos=1)

        async def collect() -> None:
            async for message in watch.messages:
                received.append(message.topic.value)
                if len(received) >= len(messages):
                    return

        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            sent = await publish_stream(iter(messages), host=private_broker.host,
                                        port=private_broker.port, progress=False, inflight=50,
                                        client_id="fleet-live-test")
            await asyncio.wait_for(collector, 30)
    assert sent == len(messages)
    assert Counter(received) == Counter(m.topic for m in messages)


def test_mqtt_packets_are_well_formed() -> None:
    connect = connect_packet("c1", 60)
    assert connect[0] == 0x10
    assert connect[1] == len(connect) - 2
    assert b"\x00\x04MQTT\x04\x02" in connect
    topic = b"\x00\x01t"
    packet = publish_packet(topic, b"x" * 200, 1, 258)
    assert packet[0] == 0x32
    # 200 + 3 + 2 = 205 > 127: a two-byte remaining length.
    assert packet[1:3] == bytes([205 % 128 | 0x80, 205 // 128])
    assert packet[3:6] == topic
    assert packet[6:8] == (258).to_bytes(2, "big")


@pytest.mark.services
async def test_load_generator_reaches_a_small_rate(private_broker: MosquittoProcess) -> None:
    rate = 2000.0
    received = 0
    expected: int | None = None
    all_in = asyncio.Event()
    broker = private_broker
    async with aiomqtt.Client(broker.host, broker.port, identifier="load-watch") as watch:
        # QoS 1: the broker queues for a subscriber that lags (QoS 0 may be dropped).
        await watch.subscribe("emon/v1/devices/+/location", qos=1)

        async def count() -> None:
            nonlocal received
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                assert {"ts", "lat", "lon", "acc"} <= body.keys()
                received += 1
                if expected is not None and received >= expected:
                    all_in.set()

        async with asyncio.TaskGroup() as tasks:
            counter = tasks.create_task(count())
            plan = LoadPlan(private_broker.host, private_broker.port, devices=200, connections=4,
                            rate=rate, duration_s=3.0, processes=2, qos=1)
            progress = io.StringIO()
            result = await asyncio.to_thread(run_load, plan, progress)
            expected = result.acknowledged
            if received >= expected:
                all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 20.0)
            counter.cancel()
    assert result.errors == 0
    assert result.acknowledged == result.published
    assert 0.8 * rate * 3 <= result.acknowledged <= 1.1 * rate * 3.5
    assert received == result.acknowledged
    lines = progress.getvalue().splitlines()
    assert sum("msg/s (target 2,000)" in line for line in lines) >= 3
