"""Benchmark: the whole daemon end to end on this machine, beside the limits of its parts.

    .venv/bin/python bench/bench_e2e.py            # full run (sustained phase 300 s)
    .venv/bin/python bench/bench_e2e.py --quick    # ~1-2 minute smoke run, smaller sizes
    .venv/bin/python bench/bench_e2e.py --duration 600 --json results.json

Starts everything itself on loopback: a private Mosquitto (max_queued_messages raised, by
daemon.localservices) and a private PostgreSQL, the daemon as a subprocess (`emon run`, so
its RSS is its own), the load generator (`simulators.load`, QoS 1, its own processes), and
measures, printing each figure with the limit it is bounded by:

1. limits: aiomqtt and paho receive rates (one subscriber process, QoS 1, messages from the
   load generator), binary COPY rows/s into a table laid out like `pings`, shapely STRtree
   batch point queries/s;
2. capacity with 100 / 10,000 / 100,000 exclusion zones (50,000 devices): the load
   generator offers more than the daemon can take; pings/s = rows committed in `pings`
   per second during the steady window (rows counted in PostgreSQL);
3. sustained: the load at 90 % of that capacity (10,000 zones) for `--duration` seconds;
   every acknowledged publish must be stored (rows == PUBACKs) and the broker's
   `$SYS/broker/publish/messages/dropped` must stay 0;
4. publish-to-alert latency at 25 %, 50 % and 90 % of capacity: probe devices step in and
   out of their own exclusion zone every PROBE_STEP_SECONDS; each fix carries its send time
   (`ts`, wall clock) and a subscriber on `emon/v1/alerts/#` measures receipt minus the
   `ts` of the fix the transition quotes as evidence (dwell: the second fix inside);
5. memory: daemon RSS before and after 50,000 devices have each sent fixes, per 10,000
   devices; and tracemalloc of the engine state (pure core, in process) per device;
6. replay of the pure core on a simulated fleet (bench_replay), pings/s on one core.

Wall-clock rates on a shared 2-core machine move with the other load: the load average is
printed with every phase, and docs/benchmarks.md reads the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiomqtt
import numpy as np
import paho.mqtt.client as paho
import psycopg
import shapely
import yaml

from daemon.localservices import MosquittoProcess, PostgresProcess, find_free_port
from daemon.store.migrations import migrate
from daemon.wire import DEVICE_SUBSCRIPTIONS
from simulators.cli_fleet import _feature_collection
from simulators.load import LoadPlan, LoadResult, device_id, run_load
from simulators.scripted_day import LonLat, offset_m

REPO = Path(__file__).resolve().parent.parent
# The daemon runs from this tree (PYTHONPATH), so a copy of the repository benchmarks its
# own code whatever the virtualenv's editable install points at.
DAEMON_COMMAND = [sys.executable, "-m", "daemon.cli"]
PY_SPY = Path(sys.executable).parent / "py-spy"
# The load generator's devices walk in this box (simulators.load._worker).
AREA_LON = (114.0, 114.08)
AREA_LAT = (22.52, 22.56)
ZONE_RADIUS_M = 50.0
PROBE_ZONE_RADIUS_M = 30.0
PROBE_OUTSIDE_M = 80.0  # from the probe zone's centre: clear of it by 50 m (margin 20 m)
PROBE_STEP_SECONDS = 2.0  # 80 m in 2 s = 40 m/s: under max_speed_mps (70)
PROBES = 20
DAEMON_CLIENT_ID = "emon-bench-daemon"
SUBJECTS_PER_OFFICER = 50
READY_TIMEOUT_SECONDS = 300.0
DRAIN_TIMEOUT_SECONDS = 120.0
SAMPLE_SECONDS = 5.0
BACKLOG_RATE = 15_000.0  # how fast the backlog for a capacity run is published
DRAIN_SAMPLE_SECONDS = 2.0
PROFILE_SECONDS = 20
LOAD_CONNECTIONS = 8
IDLE_WINDOW_SECONDS = 2.0
IDLE_CPU_SHARE = 0.1
SYS_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f})"


# ---------------------------------------------------------------------- config


def probe_device(index: int) -> str:
    return f"tag-probe{index:03d}"


def probe_centre(index: int) -> LonLat:
    # A row of probe zones north of the load area, 500 m apart.
    return LonLat(114.0 + 0.005 * index, 22.58)


def write_config(directory: Path, devices: int, zones: int, seed: int) -> None:
    """A roster of `devices` subjects (one tag each, the load generator's ids) with a
    permitted area around everything and `zones` exclusion zones (circles of
    ZONE_RADIUS_M scattered over the load area, each assigned to one subject, round robin),
    plus PROBES probe subjects with an exclusion zone of their own."""
    rng = random.Random(seed)
    (directory / "zones").mkdir(parents=True, exist_ok=True)
    district = {
        "type": "FeatureCollection", "datum": "WGS-84",
        "features": [{
            "type": "Feature",
            "properties": {"id": "bench-district", "name": "bench district", "kind": "inclusion"},
            "geometry": {"type": "Polygon", "coordinates": [[
                [113.95, 22.47], [114.25, 22.47], [114.25, 22.65], [113.95, 22.65],
                [113.95, 22.47],
            ]]},
        }],
    }
    (directory / "zones" / "district.wgs84.geojson").write_text(json.dumps(district))
    features = [
        (f"z{k:06d}", "exclusion", "exclusion",
         LonLat(rng.uniform(*AREA_LON), rng.uniform(*AREA_LAT)), ZONE_RADIUS_M)
        for k in range(zones)
    ] + [
        (f"probe-zone{p:03d}", "probe", "exclusion", probe_centre(p), PROBE_ZONE_RADIUS_M)
        for p in range(PROBES)
    ]
    (directory / "zones" / "bench.wgs84.geojson").write_text(
        json.dumps(_feature_collection(features), separators=(",", ":"))
    )
    own: list[list[str]] = [[] for _ in range(devices)]
    for k in range(zones):
        own[k % devices].append(f"z{k:06d}")
    officers = max(1, math.ceil((devices + PROBES) / SUBJECTS_PER_OFFICER))
    roster: list[dict[str, Any]] = []
    for index in range(1, devices + 1):
        entry: dict[str, Any] = {
            "id": f"f{index:05d}", "officer": f"off-{index // SUBJECTS_PER_OFFICER:04d}",
            "devices": [{"id": device_id(index), "kind": "wearable"}],
            "permitted_zone": "bench-district",
        }
        if own[index - 1]:
            entry["exclusion_zones"] = [{"zone": z} for z in own[index - 1]]
        roster.append(entry)
    for p in range(PROBES):
        roster.append({
            "id": f"probe{p:03d}", "officer": f"off-{p % officers:04d}",
            "devices": [{"id": probe_device(p), "kind": "wearable"}],
            "exclusion_zones": [{"zone": f"probe-zone{p:03d}"}],
        })
    subjects = {
        "officers": [{"id": "sup-bench", "name": "Supervisor", "role": "supervisor"}] + [
            {"id": f"off-{i:04d}", "name": f"Officer {i}", "supervisor": "sup-bench"}
            for i in range(officers + 1)
        ],
        "subjects": roster,
    }
    (directory / "subjects.yaml").write_text(
        yaml.dump(subjects, Dumper=yaml.CSafeDumper, sort_keys=False)
    )
    settings: dict[str, Any] = {
        "mqtt": {"client_id": DAEMON_CLIENT_ID},
        "region": {"name": "bench", "bbox": [113.9, 22.4, 114.3, 22.7]},
        # Silence and GNSS rules would fire for the 50,000 idle roster devices between
        # phases; they are not what is measured here.
        "rules": {"devices": {"wearable": {"silence_minutes": None, "gnss_lost_minutes": None}}},
    }
    if os.environ.get("EMON_BENCH_ACK"):
        settings["store"] = {"ack": os.environ["EMON_BENCH_ACK"]}
    (directory / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


# ---------------------------------------------------------------------- daemon


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    http_port: int
    dsn: str
    log: Path

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                out[name] = float(value)
        return out

    def received(self) -> int:
        return int(sum(v for k, v in self.metrics().items()
                       if k.startswith("emon_messages_received_total")))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def start_daemon(config: Path, broker: MosquittoProcess, dsn: str, work: Path) -> RunningDaemon:
    http_port = find_free_port()
    env = {**os.environ, "EMON_MQTT_HOST": broker.host, "EMON_MQTT_PORT": str(broker.port),
           "EMON_DATABASE_URL": dsn, "EMON_HTTP_PORT": str(http_port),
           "EMON_JOURNAL_DIR": str(work / "journal"), "PYTHONPATH": str(REPO)}
    log = work / "daemon.log"
    with log.open("ab") as out:
        process = subprocess.Popen([*DAEMON_COMMAND, "run", "--config", str(config)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    daemon = RunningDaemon(process, http_port, dsn, log)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            url = f"http://127.0.0.1:{http_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                if json.loads(response.read()).get("mqtt_connected"):
                    time.sleep(1.0)  # subscriptions follow the connection
                    return daemon
        time.sleep(0.5)
    raise RuntimeError("daemon not ready in time")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(daemon: RunningDaemon, timeout_s: float = READY_TIMEOUT_SECONDS) -> float:
    """Wait until the daemon uses under IDLE_CPU_SHARE of a core over IDLE_WINDOW_SECONDS:
    its start-up store maintenance (rollups of every subject) runs on the event loop and
    would otherwise be measured as ingest. Returns the seconds waited."""
    begin = time.monotonic()
    while time.monotonic() - begin < timeout_s:
        before = cpu_seconds(daemon.process.pid)
        time.sleep(IDLE_WINDOW_SECONDS)
        if cpu_seconds(daemon.process.pid) - before < IDLE_CPU_SHARE * IDLE_WINDOW_SECONDS:
            break
    return time.monotonic() - begin


def stop_daemon(daemon: RunningDaemon) -> None:
    daemon.process.terminate()
    try:
        daemon.process.wait(60)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait(10)


def count_pings(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pings").fetchone()
        return int(row[0]) if row else 0


# ---------------------------------------------------------------------- broker watch


class DroppedWatch:
    """Mosquitto's own count of messages it dropped (queue limits), from $SYS."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.value = -1
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(SYS_DROPPED_TOPIC, qos=0)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            self.value = int(message.payload)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# ---------------------------------------------------------------------- limits


RECEIVE_TOPIC = "emon/v1/devices/+/location"
RECEIVE_IDLE_SECONDS = 3.0


async def _aiomqtt_drain(host: str, port: int, client_id: str, expected: int) -> float:
    async with aiomqtt.Client(host, port, identifier=client_id, clean_session=False) as client:
        await client.subscribe(RECEIVE_TOPIC, qos=1)
        if expected <= 0:
            return 0.0  # the session exists now
        count, first, last = 0, 0.0, 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                async for _ in client.messages:
                    last = time.perf_counter()
                    first = first or last
                    count += 1
                    if count >= expected:
                        break
        return (count - 1) / (last - first) if count > 1 else 0.0


def _paho_drain(host: str, port: int, client_id: str, expected: int) -> float:
    stamps: list[float] = []

    def on_message(*_: Any) -> None:
        stamps.append(time.perf_counter())

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False)
    client.on_message = on_message
    client.connect(host, port)
    client.subscribe(RECEIVE_TOPIC, qos=1)
    if expected <= 0:  # let the SUBACK come back: the session exists then
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            client.loop(timeout=0.1)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    idle_since = time.monotonic()
    seen = 0
    while len(stamps) < expected and time.monotonic() < deadline:
        client.loop(timeout=0.1)
        if len(stamps) != seen:
            seen, idle_since = len(stamps), time.monotonic()
        elif time.monotonic() - idle_since > RECEIVE_IDLE_SECONDS:
            break
    client.disconnect()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def receive_limit(broker: MosquittoProcess, library: str, messages: int) -> float:
    """How fast one client of `library` takes QoS 1 messages the broker already holds for
    its persistent session (the daemon's situation with a backlog), the publisher
    finished: the client library's own limit, not the 2 cores shared with a generator."""
    client_id = f"bench-recv-{library}"
    if library == "paho":
        _paho_drain(broker.host, broker.port, client_id, 0)  # creates the session
    else:
        asyncio.run(_aiomqtt_drain(broker.host, broker.port, client_id, 0))
    plan = LoadPlan(broker.host, broker.port, devices=5000, connections=LOAD_CONNECTIONS,
                    rate=BACKLOG_RATE, duration_s=messages / BACKLOG_RATE, qos=1,
                    client_prefix=f"bench-fill-{library}")
    queued = run_load(plan, progress=None).acknowledged
    if library == "paho":
        return _paho_drain(broker.host, broker.port, client_id, queued)
    return asyncio.run(_aiomqtt_drain(broker.host, broker.port, client_id, queued))


def copy_limit(postgres: PostgresProcess, rows: int) -> float:
    import bench_writer

    dsn = postgres.create_database(f"bench_copy_{os.getpid()}_{int(time.time())}")

    async def run() -> float:
        info = await migrate(dsn)
        await bench_writer.prepare(dsn, info.timescale, 1)
        pings = bench_writer.make_pings(rows, 5000)
        seconds = await bench_writer.run_raw(dsn, pings, "raw_pings_layout")
        return rows / seconds

    return asyncio.run(run())


def shapely_limit(zones: int, points: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 10_000, size=(zones, 2))
    polygons = shapely.buffer(shapely.points(centres), ZONE_RADIUS_M, quad_segs=4)
    tree = shapely.STRtree(polygons)
    queries = shapely.points(rng.uniform(0, 10_000, size=(points, 2)))
    begin = time.perf_counter()
    tree.query(queries, predicate="intersects")
    return points / (time.perf_counter() - begin)


# ---------------------------------------------------------------------- latency probe


@dataclass
class ProbeResult:
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _fix_ts(alert: dict[str, Any]) -> float | None:
    evidence = alert.get("last_evidence") or {}
    ping = evidence.get("ping") if isinstance(evidence, dict) else None
    ts = ping.get("ts") if isinstance(ping, dict) else None
    if isinstance(ts, int | float):
        return float(ts)
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(ts).timestamp()
    return None


async def probe_latency(broker: MosquittoProcess, seconds: float) -> ProbeResult:
    """PROBES devices alternate two fixes inside their exclusion zone and two outside, one
    every PROBE_STEP_SECONDS (phases staggered); every opened/cleared transition is one
    sample: its receipt minus the send time of the fix it quotes."""
    result = ProbeResult()
    outside = [offset_m(probe_centre(p), 0.0, PROBE_OUTSIDE_M) for p in range(PROBES)]
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port,
                                  identifier=f"bench-alerts-{os.getpid()}") as client:
            await client.subscribe("emon/v1/alerts/#", qos=1)
            subscribed.set()
            async for message in client.messages:
                received = time.time()
                body = message.payload if isinstance(message.payload, bytes) else b"{}"
                with contextlib.suppress(ValueError):
                    alert = json.loads(body)
                    if not str(alert.get("subject_id", "")).startswith("probe"):
                        continue
                    sent = _fix_ts(alert)
                    if sent is not None and alert.get("transition") in (
                        "opened", "reopened", "cleared", "updated"
                    ):
                        result.latencies_ms.append((received - sent) * 1000.0)

    async def publish() -> None:
        await subscribed.wait()
        async with aiomqtt.Client(broker.host, broker.port,
                                  identifier=f"bench-probe-{os.getpid()}") as client:
            deadline = time.monotonic() + seconds
            step = 0
            while time.monotonic() < deadline:
                for p in range(PROBES):
                    await asyncio.sleep(PROBE_STEP_SECONDS / PROBES)
                    inside = ((step + p) // 2) % 2 == 0
                    where = probe_centre(p) if inside else outside[p]
                    payload = json.dumps({
                        "ts": round(time.time(), 3), "lat": round(where.lat, 7),
                        "lon": round(where.lon, 7), "acc": 5.0, "src": "gnss",
                    })
                    await client.publish(f"emon/v1/devices/{probe_device(p)}/location",
                                         payload, qos=1)
                    result.sent += 1
                step += 1

    listener = asyncio.create_task(listen(), name="bench-alert-listener")
    try:
        await publish()
        await asyncio.sleep(3.0)  # the last transitions
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await listener
    return result


def latency_at(broker: MosquittoProcess, rate: float, devices: int, seconds: float
               ) -> tuple[ProbeResult, LoadResult]:
    """Background load at `rate` (load generator, own processes) while the probe runs."""
    plan = LoadPlan(broker.host, broker.port, devices=devices, connections=LOAD_CONNECTIONS,
                    rate=rate, duration_s=seconds + 6.0, qos=1, client_prefix="bench-lat")
    holder: dict[str, LoadResult] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("r", run_load(plan, None)),
                              name="bench-load")
    thread.start()
    time.sleep(3.0)
    probe = asyncio.run(probe_latency(broker, seconds))
    thread.join()
    return probe, holder["r"]


# ---------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    offered: float
    acknowledged: int
    stored_rate: float  # rows/s committed during the steady window
    stored_total: int
    dropped: int
    rss_before: int
    rss_after: int
    seconds: float
    samples: list[float]


def profile_daemon(daemon: RunningDaemon, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (sampling, from outside: the daemon runs unchanged) for `seconds`, collapsed
    stacks into `out`; `summarize_profile` reads them."""
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(daemon.process.pid), "--duration", str(int(seconds)),
         "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 25) -> list[str]:
    """Top frames of py-spy's collapsed stacks: share of samples a frame is on the stack
    (inclusive) and at the top of it (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])[:top]
    return [f"{100 * n / total:5.1f}% incl {100 * own.get(f, 0) / total:5.1f}% self  {f}"
            for f, n in ranked] if total else []


def run_throughput(daemon: RunningDaemon, broker: MosquittoProcess, watch: DroppedWatch,
                   rate: float, devices: int, seconds: float, drain: bool,
                   profile: Path | None = None) -> Throughput:
    """Offer `rate` msg/s for `seconds`; sample the rows committed every SAMPLE_SECONDS.
    With `drain`, wait for the daemon to store every acknowledged publish. With `profile`,
    py-spy samples the daemon through the middle of the run."""
    base = count_pings(daemon.dsn)
    rss_before = daemon.rss_bytes()
    plan = LoadPlan(broker.host, broker.port, devices=devices, connections=LOAD_CONNECTIONS,
                    rate=rate, duration_s=seconds, qos=1, client_prefix="bench-load")
    holder: dict[str, LoadResult] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("r", run_load(plan, None)),
                              name="bench-load")
    started = time.monotonic()
    thread.start()
    spy = profile_daemon(daemon, seconds / 2, profile) if profile is not None else None
    samples: list[float] = []
    last, last_at = base, started
    while thread.is_alive():
        time.sleep(SAMPLE_SECONDS)
        now_rows, now = count_pings(daemon.dsn), time.monotonic()
        samples.append((now_rows - last) / (now - last_at))
        last, last_at = now_rows, now
    thread.join()
    if spy is not None:
        spy.wait(60)
    load = holder["r"]
    stored = count_pings(daemon.dsn) - base
    if drain:
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while stored < load.acknowledged and time.monotonic() < deadline:
            time.sleep(2.0)
            stored = count_pings(daemon.dsn) - base
    # Steady window: without the first two samples (connections, ramp) and the last.
    steady = samples[2:-1] or samples
    return Throughput(rate, load.acknowledged, statistics.median(steady) if steady else 0.0,
                      stored, watch.value, rss_before, daemon.rss_bytes(),
                      time.monotonic() - started, samples)


@dataclass
class Drain:
    queued: int  # publishes the broker acknowledged while the daemon was stopped
    stored: int
    rate: float  # median rows/s committed while draining
    seconds: float
    start_s: float  # until the daemon was ready (its start-up work overlaps the drain)
    dropped: int
    cpu_us_per_ping: float  # the daemon's own CPU time per stored ping while draining
    samples: list[float]


async def _create_daemon_session(broker: MosquittoProcess) -> None:
    """The daemon's persistent session and subscriptions, without starting the daemon (a
    start with 50,000 subjects takes a minute here): the broker then queues for it."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=DAEMON_CLIENT_ID,
                              clean_session=False) as client:
        for topic in DEVICE_SUBSCRIPTIONS:
            await client.subscribe(topic, qos=1)


def run_drain(work: Path, broker: MosquittoProcess, watch: DroppedWatch, dsn: str,
              devices: int, backlog: int, profile: Path | None) -> Drain:
    """The daemon's own maximum, without a load generator competing for the 2 cores: its
    persistent session is created, the load generator publishes `backlog`
    fixes (the broker queues them: max_queued_messages raised), the daemon starts and
    drains them. Rate: the median of the rows committed per DRAIN_SAMPLE_SECONDS
    between the first row and the last (start-up, incl. its store maintenance, excluded)."""
    asyncio.run(_create_daemon_session(broker))
    plan = LoadPlan(broker.host, broker.port, devices=devices, connections=LOAD_CONNECTIONS,
                    rate=BACKLOG_RATE, duration_s=backlog / BACKLOG_RATE, qos=1,
                    client_prefix="bench-backlog")
    queued = run_load(plan, progress=None).acknowledged
    begin = time.monotonic()
    daemon = start_daemon(work / "config", broker, dsn, work)
    start_s = time.monotonic() - begin
    spy: subprocess.Popen[bytes] | None = None
    samples: list[float] = []
    try:
        last, last_at = count_pings(dsn), time.monotonic()
        first_at: float | None = None
        first_rows, first_cpu, cpu_us = 0, 0.0, math.nan
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS + backlog / 100.0
        while last < queued and time.monotonic() < deadline:
            time.sleep(DRAIN_SAMPLE_SECONDS)
            rows, now = count_pings(dsn), time.monotonic()
            if rows > last:
                if first_at is None:
                    first_at, first_rows = now, rows
                    first_cpu = cpu_seconds(daemon.process.pid)
                    if profile is not None:
                        spy = profile_daemon(daemon, PROFILE_SECONDS, profile)
                else:
                    samples.append((rows - last) / (now - last_at))
            last, last_at = rows, now
        seconds = time.monotonic() - (first_at or begin)
        if first_at is not None and last > first_rows:
            cpu_us = (cpu_seconds(daemon.process.pid) - first_cpu) / (last - first_rows) * 1e6
    finally:
        if spy is not None:
            spy.wait(PROFILE_SECONDS + 30)
        stop_daemon(daemon)
    steady = samples[:-1] or samples  # the last sample ends with the backlog
    return Drain(queued, last, statistics.median(steady) if steady else 0.0, seconds, start_s,
                 watch.value, cpu_us, samples)


# ---------------------------------------------------------------------- memory (core)


def engine_memory_per_device(devices: int, fixes_per_device: int) -> float:
    """tracemalloc bytes of the engine's state per device after `fixes_per_device` fixes
    each (a device keeps up to HISTORY_FIXES evaluated fixes for the late-fix audit);
    the measurement is bench_memory's, so the two scripts print the same figure."""
    import bench_memory

    return bench_memory.measure(devices, fixes_per_device, by_line=0, echo=False)


# ---------------------------------------------------------------------- main


@dataclass(frozen=True, slots=True)
class Sizes:
    devices: int
    zone_counts: tuple[int, ...]
    backlog: int
    sustained_seconds: float
    latency_seconds: float
    limit_messages: int
    copy_rows: int
    shapely_points: int
    replay_lines: int
    replay_subjects: int
    mem_devices: int


FULL = Sizes(50_000, (100, 10_000, 100_000), 40_000, 300.0, 45.0, 50_000, 300_000, 1_000_000,
             100_000, 100, 1_000)
QUICK = Sizes(5_000, (100, 10_000), 30_000, 30.0, 20.0, 20_000, 100_000, 200_000, 10_000, 10, 200)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument("--duration", type=float, default=None,
                        help="sustained phase, seconds (default 300; --quick 30)")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="write the daemon's py-spy summary per capacity run here")
    parser.add_argument("--zones", default=None, help="comma list of zone counts")
    parser.add_argument("--skip", default="",
                        help="comma list: limits,sustained,latency,memory,replay")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    devices = args.devices or sizes.devices
    sustained_s = args.duration or sizes.sustained_seconds
    skip = set(filter(None, args.skip.split(",")))
    if args.zones:
        sizes = dataclasses.replace(sizes, zone_counts=tuple(int(z) for z in args.zones.split(",")))
    results: dict[str, Any] = {"cores": os.cpu_count(), "started": datetime.now(UTC).isoformat()}
    print(f"machine: {os.cpu_count()} cores, {load_average()}; devices {devices:,}")

    with tempfile.TemporaryDirectory(prefix="emon-bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        with PostgresProcess(tmp / "postgres") as postgres:
            if "limits" not in skip:
                with MosquittoProcess(tmp / "mosquitto-limits") as broker:
                    aiomqtt_rate = receive_limit(broker, "aiomqtt", sizes.limit_messages)
                    paho_rate = receive_limit(broker, "paho", sizes.limit_messages)
                copy_rate = copy_limit(postgres, sizes.copy_rows)
                shapely_rate = shapely_limit(10_000, sizes.shapely_points, 1)
                results["limits"] = {"aiomqtt_receive": aiomqtt_rate, "paho_receive": paho_rate,
                                     "copy_rows": copy_rate, "shapely_points": shapely_rate}
                print(f"\nlimits ({load_average()}):")
                print(f"  aiomqtt receive, 1 process, QoS 1: {aiomqtt_rate:>10,.0f} msg/s")
                print(f"  paho receive, 1 process, QoS 1:    {paho_rate:>10,.0f} msg/s")
                print(f"  binary COPY into pings' layout:    {copy_rate:>10,.0f} rows/s")
                print(f"  shapely STRtree batch (10k zones): {shapely_rate:>10,.0f} points/s")
            limits = results.get("limits", {})

            capacity: dict[int, Drain] = {}
            print(f"\ncapacity: a backlog of {sizes.backlog:,} fixes from {devices:,} devices "
                  f"queued by the broker for the stopped daemon, then drained")
            for zones in sizes.zone_counts:
                work = tmp / f"zones-{zones}"
                write_config(work / "config", devices, zones, 1)
                dsn = postgres.create_database(f"bench_e2e_{zones}_{os.getpid()}")
                with MosquittoProcess(work / "mosquitto") as broker:
                    watch = DroppedWatch(broker)
                    try:
                        result = run_drain(work, broker, watch, dsn, devices, sizes.backlog,
                                           work / "py-spy.txt")
                    finally:
                        watch.close()
                capacity[zones] = result
                if args.profile_dir is not None and (work / "py-spy.txt").exists():
                    args.profile_dir.mkdir(parents=True, exist_ok=True)
                    target = args.profile_dir / f"daemon-{zones}-zones.txt"
                    target.write_text("\n".join(summarize_profile(work / "py-spy.txt", 60)))
                ratio = result.rate / capacity[sizes.zone_counts[0]].rate
                print(f"  {zones:>7,} zones: {result.rate:>8,.0f} pings/s stored "
                      f"(x{ratio:.2f} of {sizes.zone_counts[0]} zones; "
                      f"x{result.rate / limits.get('aiomqtt_receive', math.inf):.2f} of "
                      f"aiomqtt, x{result.rate / limits.get('copy_rows', math.inf):.3f} "
                      f"of COPY); daemon CPU {result.cpu_us_per_ping:,.0f} us/ping = "
                      f"{1e6 / result.cpu_us_per_ping:,.0f} pings/s per dedicated core; "
                      f"{result.stored:,}/{result.queued:,} stored, broker dropped "
                      f"{result.dropped}; daemon start {result.start_s:.0f} s; "
                      f"{load_average()}")
                results.setdefault("capacity", {})[zones] = result.__dict__

            if "sustained" not in skip:
                middle = sizes.zone_counts[min(1, len(sizes.zone_counts) - 1)]
                maximum = capacity[middle].rate
                work = tmp / "sustained"
                write_config(work / "config", devices, middle, 1)
                dsn = postgres.create_database(f"bench_e2e_sustained_{os.getpid()}")
                with MosquittoProcess(work / "mosquitto") as broker:
                    watch = DroppedWatch(broker)
                    daemon = start_daemon(work / "config", broker, dsn, work)
                    wait_idle(daemon)
                    try:
                        rate = 0.9 * maximum
                        sustained = run_throughput(daemon, broker, watch, rate, devices,
                                                   sustained_s, drain=True)
                        results["sustained"] = sustained.__dict__
                        complete = ("all" if sustained.stored_total >= sustained.acknowledged
                                    else "MISSING")
                        dropped = sustained.dropped if sustained.dropped >= 0 else "(no $SYS)"
                        print(f"\nsustained: offered {rate:,.0f} msg/s (90 % of capacity, "
                              f"{middle:,} zones) for {sustained_s:.0f} s: "
                              f"{sustained.acknowledged:,} publishes acknowledged, "
                              f"{sustained.stored_total:,} rows stored "
                              f"({complete}), steady {sustained.stored_rate:,.0f} pings/s, "
                              f"broker dropped {dropped}, "
                              f"{load_average()}")
                        per_10k = (sustained.rss_after - sustained.rss_before) / devices * 10_000
                        print(f"memory: daemon RSS {sustained.rss_before / 2**20:,.0f} MiB "
                              f"-> {sustained.rss_after / 2**20:,.0f} MiB after {devices:,} devices"
                              f" reported: {per_10k / 2**20:,.1f} MiB per 10,000 devices "
                              f"({per_10k / 10_000:,.0f} bytes/device)")
                        results["rss_per_device"] = per_10k / 10_000
                        if "latency" not in skip:
                            print("latency publish -> alert on MQTT (probe devices):")
                            for share in (0.25, 0.5, 0.9):
                                probe, load = latency_at(broker, share * maximum, devices,
                                                         sizes.latency_seconds)
                                print(f"  {share:>4.0%} load ({load.steady_rate():>7,.0f} msg/s): "
                                      f"{len(probe.latencies_ms):>4} alerts, p50 "
                                      f"{probe.percentile(0.5):>7.1f} ms, p99 "
                                      f"{probe.percentile(0.99):>7.1f} ms, max "
                                      f"{max(probe.latencies_ms, default=math.nan):>7.1f} ms, "
                                      f"{load_average()}")
                                results.setdefault("latency", {})[share] = {
                                    "offered": share * maximum, "load": load.steady_rate(),
                                    "samples": len(probe.latencies_ms),
                                    "p50_ms": probe.percentile(0.5),
                                    "p99_ms": probe.percentile(0.99),
                                }
                    finally:
                        stop_daemon(daemon)
                        watch.close()

        if "memory" not in skip:
            for fixes in (10, 130):
                per_device = engine_memory_per_device(sizes.mem_devices, fixes)
                print(f"engine state (tracemalloc): {per_device:,.0f} bytes/device after "
                      f"{fixes} fixes each ({sizes.mem_devices:,} devices)")
                results.setdefault("engine_bytes_per_device", {})[fixes] = per_device

        if "replay" not in skip:
            import bench_replay

            config_dir, lines = bench_replay.fleet_replay_input(
                sizes.replay_subjects, 1, tmp / "replay")
            replay = bench_replay.replay_cpu(config_dir, lines, sizes.replay_lines)
            shapely_rate = limits.get("shapely_points", math.nan)
            print(f"replay of the pure core: {replay.pings_per_s:,.0f} msg/s on one core "
                  f"({replay.messages:,} fleet messages, {replay.cpu_s:.1f} CPU s; "
                  f"x{replay.pings_per_s / shapely_rate:.3f} of shapely's batch rate)")
            results["replay_per_s"] = replay.pings_per_s
    results["finished"] = datetime.now(UTC).isoformat()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
