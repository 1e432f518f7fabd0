"""The scripted demo day (`emon sim`): determinism, wire contract, the script itself, publishing."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import math
import re
import socket
import time as wall_time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import DEFAULT_TIERS, TransitionKind
from simulators import cli as sim_cli
from simulators import scripted_day as sd
from simulators.publisher import encode_payload, publish
from simulators.scripted_day import LonLat, SimMessage, expected_alerts, scripted_day, write_jsonl

DAY = date(2024, 5, 1)
DEVICES = ("tag-s001", "tag-s002", "tag-s003")
SHANGHAI = ZoneInfo("Asia/Shanghai")
EARTH_RADIUS_M = 6_371_008.8
HOME_RADIUS_M = 75.0
HOME_NOISE_BOUND_M = 25.0
"""A subject at home must be reported this close to the home centre (noise only)."""
SCHOOL_EDGE_MARGIN_M = 20.0
"""'Well inside' the school rectangle: at least this far from every edge."""
NANSHAN_RADIUS_M = 100.0
MAX_SPEED_M_PER_S = 15.0
"""Fastest plausible apparent speed between consecutive fixes (driving plus noise)."""
ZONES_DIR = Path(__file__).resolve().parent.parent / "config" / "zones"
DEVICE_TOPIC = re.compile(r"^emon/v1/devices/(?P<device>[A-Za-z0-9_-]+)/(?P<kind>location|event)$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
EVENT_TYPES = {
    "strap_open",
    "strap_closed",
    "case_open",
    "case_closed",
    "battery_low",
    "power_off",
    "power_on",
    "charger_connected",
    "charger_disconnected",
    "checkin",
}


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def distance_m(payload: dict[str, Any], place: LonLat) -> float:
    return haversine_m(payload["lon"], payload["lat"], place.lon, place.lat)


def east_north_m(payload: dict[str, Any], origin: LonLat) -> tuple[float, float]:
    """Signed east/north offsets of a fix from `origin`, metres."""
    east = haversine_m(origin.lon, payload["lat"], payload["lon"], payload["lat"])
    north = haversine_m(origin.lon, origin.lat, origin.lon, payload["lat"])
    return (
        math.copysign(east, payload["lon"] - origin.lon),
        math.copysign(north, payload["lat"] - origin.lat),
    )


def local_time(payload: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(payload["ts"]).astimezone(SHANGHAI)


def at_local(day: date, hh: int, mm: int = 0) -> datetime:
    if hh == 24:
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=SHANGHAI)
    return datetime.combine(day, time(hh, mm), tzinfo=SHANGHAI)


def fixes(messages: list[SimMessage], device_id: str) -> list[dict[str, Any]]:
    topic = f"emon/v1/devices/{device_id}/location"
    return [m.payload for m in messages if m.topic == topic]


def fixes_between(
    messages: list[SimMessage], device_id: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Fixes with start <= ts <= end."""
    return [p for p in fixes(messages, device_id) if start <= local_time(p) <= end]


@pytest.fixture(scope="module")
def day_messages() -> list[SimMessage]:
    return scripted_day(DAY, seed=1)


# --- determinism, ordering, counts -----------------------------------------------------------


def test_same_seed_same_messages() -> None:
    assert scripted_day(DAY, seed=7) == scripted_day(DAY, seed=7)


def test_different_seed_different_noise_same_schedule() -> None:
    a, b = scripted_day(DAY, seed=7), scripted_day(DAY, seed=8)
    assert len(a) == len(b)
    assert sorted(m.payload["ts"] for m in a) == sorted(m.payload["ts"] for m in b)
    positions_a = {(p["ts"], d): (p["lat"], p["lon"]) for d in DEVICES for p in fixes(a, d)}
    positions_b = {(p["ts"], d): (p["lat"], p["lon"]) for d in DEVICES for p in fixes(b, d)}
    assert positions_a.keys() == positions_b.keys()
    differing = sum(positions_a[k] != positions_b[k] for k in positions_a)
    assert differing > 0.9 * len(positions_a)


def test_sorted_by_publish_time_in_utc(day_messages: list[SimMessage]) -> None:
    ats = [m.at for m in day_messages]
    assert ats == sorted(ats)
    assert all(at.utcoffset() == timedelta(0) for at in ats)


def test_message_count_per_day(day_messages: list[SimMessage]) -> None:
    # 3 tags x 1440 fixes + strap_open + strap_closed
    assert len(day_messages) == 3 * 1440 + 2


@pytest.mark.parametrize("interval_s", [30, 60, 300])
def test_one_fix_per_interval_covering_the_local_day(interval_s: int) -> None:
    messages = scripted_day(DAY, seed=3, ping_interval_seconds=interval_s)
    midnight, next_midnight = at_local(DAY, 0), at_local(DAY, 24)
    for device_id in sd.SUBJECT_OF_DEVICE:
        times = [local_time(p) for p in fixes(messages, device_id)]
        assert len(times) == 86_400 // interval_s
        assert midnight <= times[0] < midnight + timedelta(seconds=interval_s)
        assert next_midnight - timedelta(seconds=interval_s) <= times[-1] < next_midnight
        assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(seconds=interval_s)}


def test_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="ping_interval_seconds"):
        scripted_day(DAY, ping_interval_seconds=0)


# --- wire contract v1 --------------------------------------------------------------------------


def _check_ts(value: object) -> datetime:
    assert isinstance(value, str)
    assert RFC3339.match(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


def test_every_message_conforms_to_wire_contract(day_messages: list[SimMessage]) -> None:
    for message in day_messages:
        match = DEVICE_TOPIC.match(message.topic)
        assert match, message.topic
        assert match["device"] in sd.SUBJECT_OF_DEVICE
        payload = message.payload
        ts = _check_ts(payload["ts"])
        assert ts.astimezone(SHANGHAI).date() == DAY
        # published shortly after the device's event time
        assert timedelta(0) <= message.at - ts < timedelta(seconds=5)
        json.loads(encode_payload(payload))  # serialisable
        if match["kind"] == "location":
            assert set(payload) <= {"ts", "lat", "lon", "acc", "src", "batt"}
            assert {"ts", "lat", "lon", "acc", "src"} <= set(payload)
            for key in ("lat", "lon", "acc"):
                assert isinstance(payload[key], float)
                assert math.isfinite(payload[key])
            assert -90 <= payload["lat"] <= 90
            assert -180 <= payload["lon"] <= 180
            assert 5.0 <= payload["acc"] <= 15.0
            assert payload["src"] in {"gnss", "cell", "wifi"}
            if "batt" in payload:
                assert isinstance(payload["batt"], int | float)
                assert 0 <= payload["batt"] <= 100
        else:
            assert set(payload) == {"ts", "type"}
            assert payload["type"] in EVENT_TYPES


def test_battery_drains_slowly(day_messages: list[SimMessage]) -> None:
    for device_id in sd.SUBJECT_OF_DEVICE:
        levels = [p["batt"] for p in fixes(day_messages, device_id)]
        assert all(b <= a for a, b in itertools.pairwise(levels))
        assert 0 < levels[0] - levels[-1] <= 20
        assert levels[-1] > 20  # no battery_low during the demo


def test_no_teleports(day_messages: list[SimMessage]) -> None:
    for device_id in sd.SUBJECT_OF_DEVICE:
        track = fixes(day_messages, device_id)
        for a, b in itertools.pairwise(track):
            seconds = (local_time(b) - local_time(a)).total_seconds()
            metres = haversine_m(a["lon"], a["lat"], b["lon"], b["lat"])
            assert metres / seconds < MAX_SPEED_M_PER_S, (device_id, a, b)


# --- the script ------------------------------------------------------------------------------


def _curfew(p: dict[str, Any]) -> bool:
    t = local_time(p).time()
    return t < time(6) or t >= time(22)


def test_at_home_during_curfew_except_s002_breach(day_messages: list[SimMessage]) -> None:
    for device_id, subject_id in sd.SUBJECT_OF_DEVICE.items():
        home = sd.HOME_OF_SUBJECT[subject_id]
        checked = 0
        for p in fixes(day_messages, device_id):
            if not _curfew(p):
                continue
            if subject_id == "s002" and time(23) <= local_time(p).time() < time(23, 50):
                continue
            assert distance_m(p, home) < HOME_RADIUS_M, (device_id, p)
            assert distance_m(p, home) < HOME_NOISE_BOUND_M, (device_id, p)
            checked += 1
        assert checked > 7 * 60  # most of the 8 curfew hours


def test_s002_breaches_curfew_for_about_fifty_minutes(day_messages: list[SimMessage]) -> None:
    home = sd.HOME_S002
    away = [
        p
        for p in fixes(day_messages, "tag-s002")
        if _curfew(p) and distance_m(p, home) >= HOME_RADIUS_M
    ]
    assert away
    first, last = local_time(away[0]), local_time(away[-1])
    assert at_local(DAY, 23) <= first <= at_local(DAY, 23, 3)
    assert at_local(DAY, 23, 47) <= last < at_local(DAY, 23, 50)
    farthest = max(distance_m(p, home) for p in away)
    assert 1300 <= farthest <= 1700
    for p in away:
        assert distance_m(p, sd.SCHOOL_FUTIAN_1) > 1000


# (device, from, to, place, max distance in metres from the place)
STAYS: list[tuple[str, tuple[int, int], tuple[int, int], str, float]] = [
    ("tag-s001", (0, 0), (8, 30), "HOME_S001", HOME_NOISE_BOUND_M),
    ("tag-s001", (9, 0), (18, 0), "WORK_S001", HOME_NOISE_BOUND_M),
    ("tag-s001", (18, 30), (24, 0), "HOME_S001", HOME_NOISE_BOUND_M),
    ("tag-s002", (0, 0), (10, 0), "HOME_S002", HOME_NOISE_BOUND_M),
    ("tag-s002", (10, 10), (15, 50), "ERRANDS_S002", HOME_NOISE_BOUND_M),
    ("tag-s002", (16, 0), (23, 0), "HOME_S002", HOME_NOISE_BOUND_M),
    ("tag-s002", (23, 50), (24, 0), "HOME_S002", HOME_NOISE_BOUND_M),
    ("tag-s003", (0, 0), (14, 30), "HOME_S003", HOME_NOISE_BOUND_M),
    ("tag-s003", (15, 0), (15, 20), "SCHOOL_FUTIAN_1", HOME_NOISE_BOUND_M),
    ("tag-s003", (15, 45), (17, 0), "HOME_S003", HOME_NOISE_BOUND_M),
    ("tag-s003", (17, 40), (18, 30), "NANSHAN_POINT", NANSHAN_RADIUS_M),
    ("tag-s003", (19, 15), (24, 0), "HOME_S003", HOME_NOISE_BOUND_M),
]


@pytest.mark.parametrize(("device_id", "start", "end", "place", "max_m"), STAYS)
def test_stays(
    day_messages: list[SimMessage],
    device_id: str,
    start: tuple[int, int],
    end: tuple[int, int],
    place: str,
    max_m: float,
) -> None:
    where: LonLat = getattr(sd, place)
    stay = fixes_between(day_messages, device_id, at_local(DAY, *start), at_local(DAY, *end))
    minutes = (at_local(DAY, *end) - at_local(DAY, *start)).total_seconds() / 60
    assert len(stay) >= minutes - 1
    for p in stay:
        assert distance_m(p, where) < max_m, (device_id, place, p)


def test_errands_are_about_800_m_from_home_and_away_from_school() -> None:
    assert 700 <= haversine_m(*_xy(sd.ERRANDS_S002), *_xy(sd.HOME_S002)) <= 900
    assert haversine_m(*_xy(sd.ERRANDS_S002), *_xy(sd.SCHOOL_FUTIAN_1)) > 1000
    assert 1400 <= haversine_m(*_xy(sd.NIGHT_OUT_S002), *_xy(sd.HOME_S002)) <= 1600


def _xy(p: LonLat) -> tuple[float, float]:
    return p.lon, p.lat


def _inside_school(p: dict[str, Any], margin_m: float) -> bool:
    east, north = east_north_m(p, sd.SCHOOL_FUTIAN_1)
    return (
        abs(east) <= sd.SCHOOL_WIDTH_M / 2 - margin_m
        and abs(north) <= sd.SCHOOL_HEIGHT_M / 2 - margin_m
    )


def test_s003_well_inside_school_15_00_to_15_20(day_messages: list[SimMessage]) -> None:
    visit = fixes_between(day_messages, "tag-s003", at_local(DAY, 15), at_local(DAY, 15, 20))
    assert len(visit) == 20
    for p in visit:
        assert _inside_school(p, SCHOOL_EDGE_MARGIN_M), p


def test_only_s003_and_only_around_15h_near_the_school(day_messages: list[SimMessage]) -> None:
    for device_id in ("tag-s001", "tag-s002"):
        for p in fixes(day_messages, device_id):
            assert distance_m(p, sd.SCHOOL_FUTIAN_1) > 1000, (device_id, p)
    for p in fixes(day_messages, "tag-s003"):
        if _inside_school(p, margin_m=0.0):
            assert at_local(DAY, 14, 58) <= local_time(p) <= at_local(DAY, 15, 22), p


def test_s003_in_nanshan_17_40_to_18_30(day_messages: list[SimMessage]) -> None:
    visit = fixes_between(day_messages, "tag-s003", at_local(DAY, 17, 40), at_local(DAY, 18, 30))
    assert len(visit) >= 50
    for p in visit:
        assert distance_m(p, sd.NANSHAN_POINT) < NANSHAN_RADIUS_M, p
    # Nanshan is far from everything in Futian the subjects frequent.
    assert haversine_m(*_xy(sd.NANSHAN_POINT), *_xy(sd.HOME_S003)) > 5000


def test_strap_open_closed_blip(day_messages: list[SimMessage]) -> None:
    events = [(m.topic, m.payload) for m in day_messages if m.topic.endswith("/event")]
    assert events == [
        (
            "emon/v1/devices/tag-s001/event",
            {"ts": "2024-05-01T10:15:00+08:00", "type": "strap_open"},
        ),
        (
            "emon/v1/devices/tag-s001/event",
            {"ts": "2024-05-01T10:17:00+08:00", "type": "strap_closed"},
        ),
    ]


def test_expected_alerts() -> None:
    got = [(a.subject_id, a.rule, a.tier, a.zone_id) for a in expected_alerts()]
    assert got == [
        ("s001", "strap_open", "critical", None),
        ("s002", "curfew_away", "high", "home-s002"),
        ("s003", "exclusion_entry", "critical", "school-futian-1"),
        ("s003", "boundary_exit", "high", "district-futian"),
    ]
    assert all(a.tier == DEFAULT_TIERS[a.rule] for a in expected_alerts())


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**63),
    interval_s=st.sampled_from([20, 30, 45, 60, 90, 120, 300]),
)
def test_curfew_invariant_for_any_seed_and_interval(seed: int, interval_s: int) -> None:
    messages = scripted_day(DAY, seed=seed, ping_interval_seconds=interval_s)
    for device_id, subject_id in sd.SUBJECT_OF_DEVICE.items():
        for p in fixes(messages, device_id):
            if _curfew(p) and not (
                subject_id == "s002" and time(23) <= local_time(p).time() < time(23, 50)
            ):
                assert distance_m(p, sd.HOME_OF_SUBJECT[subject_id]) < HOME_NOISE_BOUND_M


# --- zone files ------------------------------------------------------------------------------


def _polygon_centroid(ring: list[list[float]]) -> tuple[float, float]:
    """Area centroid of a closed ring (planar in lon/lat; fine for zones of ~100 m)."""
    area2 = cx = cy = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(ring):
        cross = x0 * y1 - x1 * y0
        area2 += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    return cx / (3 * area2), cy / (3 * area2)


def _wgs84_zone_features() -> Iterator[dict[str, Any]]:
    for path in sorted(ZONES_DIR.glob("*.geojson")):
        collection = json.loads(path.read_text(encoding="utf-8"))
        if str(collection.get("datum", "WGS-84")).upper().replace("-", "") != "WGS84":
            continue
        yield from collection.get("features", [])


@pytest.mark.parametrize(
    ("zone_id", "constant"),
    [
        ("home-s001", "HOME_S001"),
        ("home-s002", "HOME_S002"),
        ("home-s003", "HOME_S003"),
        ("work-s001", "WORK_S001"),
        ("school-futian-1", "SCHOOL_FUTIAN_1"),
    ],
)
def test_zone_centres_match_zone_files(zone_id: str, constant: str) -> None:
    features = {f.get("properties", {}).get("id", f.get("id")): f for f in _wgs84_zone_features()}
    if zone_id not in features:
        pytest.skip(f"{zone_id} not in {ZONES_DIR}")
    geometry = features[zone_id]["geometry"]
    assert geometry["type"] == "Polygon"
    lon, lat = _polygon_centroid(geometry["coordinates"][0])
    centre: LonLat = getattr(sd, constant)
    assert haversine_m(lon, lat, centre.lon, centre.lat) < 1.0, (zone_id, lon, lat)


# --- replay file and CLI ---------------------------------------------------------------------


def _parse_replay(text: str) -> list[SimMessage]:
    out = []
    for line in text.splitlines():
        record = json.loads(line)
        assert set(record) == {"topic", "payload", "received_at"}
        received_at = _check_ts(record["received_at"])
        out.append(SimMessage(record["topic"], record["payload"], received_at))
    return out


def test_jsonl_round_trips(tmp_path: Path, day_messages: list[SimMessage]) -> None:
    path = tmp_path / "day.jsonl"
    assert write_jsonl(day_messages, path) == len(day_messages)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert _parse_replay(text) == day_messages

    stream = io.StringIO()
    write_jsonl(day_messages[:10], stream)
    assert stream.getvalue() == "".join(text.splitlines(keepends=True)[:10])


def _sim_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emon")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(subparsers)
    return parser.parse_args(["sim", *argv])


def test_cli_out_writes_replay_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    args = _sim_args("--day", "2024-05-01", "--seed", "5", "--out", str(path))
    assert args.func(args) == 0
    assert _parse_replay(path.read_text(encoding="utf-8")) == scripted_day(DAY, seed=5)


def test_cli_out_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    args = _sim_args("--day", "2024-05-01", "--ping-interval", "600", "--out", "-")
    assert args.func(args) == 0
    expected = scripted_day(DAY, seed=1, ping_interval_seconds=600)
    assert _parse_replay(capsys.readouterr().out) == expected


def test_cli_expect_prints_alerts(capsys: pytest.CaptureFixture[str]) -> None:
    args = _sim_args("--expect")
    assert args.func(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [a.to_json() for a in expected_alerts()]
    assert lines[0] == {
        "subject_id": "s001",
        "rule": "strap_open",
        "tier": "critical",
        "zone_id": None,
    }


def test_cli_defaults() -> None:
    args = _sim_args()
    assert args.broker == ("127.0.0.1", 1883)
    assert args.speed is None
    assert args.out is None
    assert not args.expect
    assert args.seed == 1
    now = datetime(2024, 5, 1, 16, 30, tzinfo=UTC)  # 00:30 on 2 May in Shanghai
    assert sim_cli.default_day(now) == date(2024, 5, 1)
    today_shanghai = datetime.now(SHANGHAI).date()
    assert sim_cli.default_day() in {today_shanghai - timedelta(days=1), today_shanghai}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("broker.local:18830", ("broker.local", 18830)),
        ("localhost", ("localhost", 1883)),
        ("[::1]:1884", ("::1", 1884)),
        ("[::1]", ("::1", 1883)),
    ],
)
def test_parse_broker(value: str, expected: tuple[str, int]) -> None:
    assert sim_cli.parse_broker(value) == expected


@pytest.mark.parametrize("value", [":1883", "host:", "host:0", "host:70000", "[::1", "[::1]x"])
def test_parse_broker_rejects(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        sim_cli.parse_broker(value)


@pytest.mark.parametrize("argv", [["--speed", "0"], ["--speed", "-2"], ["--day", "01/05/2024"]])
def test_cli_rejects_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _sim_args(*argv)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_cli_unreachable_broker_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    args = _sim_args("--day", "2024-05-01", "--broker", f"127.0.0.1:{_closed_port()}")
    assert args.func(args) == 1
    assert "emon sim: MQTT broker" in capsys.readouterr().err


async def test_publish_validates_arguments() -> None:
    assert await publish([], host="127.0.0.1", port=_closed_port()) == 0
    with pytest.raises(ValueError, match="speed"):
        await publish(scripted_day(DAY)[:1], host="127.0.0.1", port=1883, speed=0)


# --- real broker -----------------------------------------------------------------------------


class Broker(Protocol):
    """What the `mosquitto` fixture (tests/conftest.py) provides."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def _slice(start: datetime, end: datetime) -> list[SimMessage]:
    return [m for m in scripted_day(DAY, seed=11) if start <= m.at < end]


def _key(topic: str, payload: object) -> tuple[str, str]:
    return topic, json.dumps(payload, sort_keys=True)


async def _publish_and_collect(
    broker: Broker,
    messages: list[SimMessage],
    speed: float | None,
    progress: io.StringIO | None = None,
) -> tuple[int, list[tuple[str, str]], float]:
    wanted = Counter(_key(m.topic, m.payload) for m in messages)
    received: list[tuple[str, str]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-sim-sub") as sub:
        await sub.subscribe("emon/v1/devices/+/+", qos=1)
        started = wall_time.monotonic()
        count = await publish(
            messages,
            host=broker.host,
            port=broker.port,
            speed=speed,
            client_id="test-sim-pub",
            progress=progress is not None,
            progress_stream=progress,
        )
        elapsed = wall_time.monotonic() - started
        async with asyncio.timeout(10):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                key = _key(message.topic.value, json.loads(message.payload))
                if key in wanted:  # ignore anything else on the broker
                    received.append(key)
                if Counter(received) >= wanted:
                    break
    return count, received, elapsed


@pytest.mark.services
async def test_publish_reaches_broker(mosquitto: Broker) -> None:
    # 10:00-10:30 local: 90 fixes plus the strap_open / strap_closed events.
    messages = _slice(at_local(DAY, 10), at_local(DAY, 10, 30))
    assert len(messages) == 92
    count, received, _ = await _publish_and_collect(mosquitto, messages, speed=None)
    assert count == len(messages)
    assert Counter(received) == Counter(_key(m.topic, m.payload) for m in messages)
    # QoS 1 from one client: per-topic order is kept.
    for device_id in sd.SUBJECT_OF_DEVICE:
        topic = f"emon/v1/devices/{device_id}/location"
        assert [k for k in received if k[0] == topic] == [
            _key(m.topic, m.payload) for m in messages if m.topic == topic
        ]


@pytest.mark.services
async def test_publish_paces_by_speed(mosquitto: Broker) -> None:
    # 5 virtual minutes at 300x: ~1 s of wall time.
    messages = _slice(at_local(DAY, 12), at_local(DAY, 12, 5))
    span_s = (messages[-1].at - messages[0].at).total_seconds()
    progress = io.StringIO()
    count, received, elapsed = await _publish_and_collect(
        mosquitto, messages, speed=300, progress=progress
    )
    assert count == len(messages) == len(received)
    last_line = progress.getvalue().splitlines()[-1]
    assert f"published {count}/{count}" in last_line
    assert messages[-1].payload["ts"] in last_line
    assert span_s / 300 - 0.05 <= elapsed < span_s / 300 + 3.0


# --- the daemon's own pipeline agrees --------------------------------------------------------


def test_pipeline_raises_exactly_the_expected_alerts(day_messages: list[SimMessage]) -> None:
    """Fed through the pure pipeline with the shipped config, the day opens exactly the
    expected alerts (virtual time; ticks as in the daemon)."""
    from daemon.configfiles import load_config
    from daemon.pipeline import Pipeline

    loaded = load_config(Path(__file__).resolve().parent.parent / "config", env={})
    pipeline = Pipeline(loaded.core)
    tick = timedelta(seconds=loaded.settings.tick_interval_seconds)
    next_tick = day_messages[0].at
    opened: list[tuple[str, str, str, str | None]] = []
    for message in day_messages:
        transitions = []
        while next_tick <= message.at:
            transitions += pipeline.tick(next_tick)
            next_tick += tick
        outcome = pipeline.handle(message.topic, encode_payload(message.payload), message.at)
        assert outcome.rejection is None, outcome.rejection
        transitions += outcome.transitions
        opened += [
            (t.alert.subject_id, t.alert.rule.value, t.alert.tier.value, t.alert.zone_id)
            for t in transitions
            if t.kind is TransitionKind.OPENED
        ]
    assert sorted(opened, key=str) == sorted(
        ((a.subject_id, a.rule.value, a.tier.value, a.zone_id) for a in expected_alerts()),
        key=str,
    )
