"""What the officer console costs the ingest path.

    .venv/bin/python bench/bench_console.py [--pings 20000] [--services]

1. In process (no servers): the per-ping cost of `LiveFeed.on_observation` with 0, 1, 10,
   100 and 1000 open streams that all see every subject (a command centre's worst case),
   next to the core's own `Pipeline.handle` for the same pings; and how many position
   events one stream is written when pings arrive far faster than the flush interval.
2. With --services: the real daemon (private Mosquitto and PostgreSQL, as the tests run
   them) ingesting the same MQTT pings with no console stream, then with 50 streams
   reading over loopback plus 5 that connect and never read (the readers in a process of
   their own); pings/s of each, and the ratio.

Prints numbers; the machine (2 cores, shared, noisy) makes single runs vary by 10-20 %,
so each in-process figure is the best of 5 rounds and ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import aiomqtt  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from daemon.configfiles import load_config  # noqa: E402
from daemon.console.feed import LiveFeed, pump  # noqa: E402
from daemon.pipeline import Pipeline  # noqa: E402

ROUNDS = 5
STREAM_COUNTS = (0, 1, 10, 100, 1000)
DEVICES = ("tag-s001", "tag-s002", "tag-s003")
HOME = {"tag-s001": (22.5480, 114.0400), "tag-s002": (22.5400, 114.0600),
        "tag-s003": (22.5350, 114.0300)}


def _messages(count: int, start: datetime) -> list[tuple[str, bytes, datetime]]:
    out = []
    for i in range(count):
        device = DEVICES[i % len(DEVICES)]
        lat, lon = HOME[device]
        at = start + timedelta(seconds=i)
        payload = {"ts": at.isoformat(), "lat": lat + (i % 7) * 1e-5, "lon": lon,
                   "acc": 8.0, "src": "gnss"}
        out.append((f"emon/v1/devices/{device}/location", json.dumps(payload).encode(), at))
    return out


def in_process(pings: int) -> None:
    loaded = load_config(REPO / "config", env={})
    start = datetime.now(UTC) - timedelta(seconds=pings + 60)
    messages = _messages(pings, start)
    everyone = frozenset(loaded.core.subjects)
    best: dict[int, float] = {}
    best_core = float("inf")
    ratios: dict[int, list[float]] = {n: [] for n in STREAM_COUNTS}
    for _ in range(ROUNDS):
        pipeline = Pipeline(loaded.core)
        observations = []
        began = time.perf_counter()
        for topic, payload, at in messages:
            outcome = pipeline.handle(topic, payload, at)
            assert outcome.observation is not None
            assert outcome.subject_id is not None
            observations.append((outcome.observation, outcome.subject_id))
        core = (time.perf_counter() - began) / pings
        best_core = min(best_core, core)
        for streams in STREAM_COUNTS:
            feed = LiveFeed(pipeline, lambda _o: everyone, max_clients=10_000, queue_size=1000,
                            stale_after=timedelta(minutes=30), clock=lambda: datetime.now(UTC))
            clients = [feed.subscribe("cmd-futian", everyone) for _ in range(streams)]
            began = time.perf_counter()
            for observation, subject in observations:
                feed.on_observation(observation, subject)
            cost = (time.perf_counter() - began) / pings
            best[streams] = min(best.get(streams, float("inf")), cost)
            ratios[streams].append(cost / core)
            for client in clients:
                client.take_positions()
    print(f"in process, {pings} pings, best of {ROUNDS} rounds:")
    print(f"  core (decode + rules + alerts), Pipeline.handle: {best_core * 1e6:8.2f} µs/ping")
    for streams in STREAM_COUNTS:
        median = sorted(ratios[streams])[len(ratios[streams]) // 2]
        print(f"  LiveFeed.on_observation, {streams:4d} streams:  {best[streams] * 1e6:8.2f} "
              f"µs/ping  ({median:6.1%} of the core's, median of rounds)")


async def coalescing(pings: int) -> None:
    loaded = load_config(REPO / "config", env={})
    pipeline = Pipeline(loaded.core)
    everyone = frozenset(loaded.core.subjects)
    feed = LiveFeed(pipeline, lambda _o: everyone, max_clients=1, queue_size=1000,
                    stale_after=timedelta(minutes=30), clock=lambda: datetime.now(UTC))
    client = feed.subscribe("cmd-futian", everyone)
    writes: list[bytes] = []

    async def write(data: bytes) -> None:
        writes.append(data)

    task = asyncio.create_task(pump(client, write, position_flush_seconds=1.0))
    start = datetime.now(UTC) - timedelta(seconds=pings + 60)
    began = time.perf_counter()
    for i, (topic, payload, at) in enumerate(_messages(pings, start)):
        outcome = pipeline.handle(topic, payload, at)
        assert outcome.observation is not None
        assert outcome.subject_id is not None
        feed.on_observation(outcome.observation, outcome.subject_id)
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the stream's writer run, as the daemon's loop does
    elapsed = time.perf_counter() - began
    await asyncio.sleep(1.1)
    client.close("done")
    await task
    events = sum(chunk.count(b"event: position") for chunk in writes)
    print(f"coalescing: {pings} pings for 3 subjects in {elapsed:.2f} s -> {events} position "
          f"events written to the stream ({len(writes)} writes), flush every 1.0 s")


# ---------------------------------------------------------------------- with servers


def _publish_in_thread(host: str, port: int, messages: list[tuple[str, bytes, datetime]]) -> None:
    async def run() -> None:
        async with aiomqtt.Client(host, port, identifier="bench-console-pub",
                                  max_inflight_messages=200) as client:
            for topic, payload, _ in messages:
                await client.publish(topic, payload, qos=1)

    asyncio.run(run())


def _processed() -> float:
    return REGISTRY.get_sample_value("emon_observations_processed_total",
                                     {"kind": "LocationFix"}) or 0.0


async def _read_streams(url: str, token: str, reading: int, stalled: int) -> None:
    """The browsers, in a process of their own so that their work is not the daemon's:
    open the streams, say "ready", count position events until stdin closes."""
    headers = {"Authorization": f"Bearer {token}"}
    received = [0]
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    async with aiohttp.ClientSession() as http:

        async def read() -> None:
            async with http.get(url, headers=headers) as response:
                async for line in response.content:
                    if line.startswith(b"event: position"):
                        received[0] += 1

        readers = [asyncio.create_task(read()) for _ in range(reading)]
        raw = []
        for _ in range(stalled):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /console/api/events HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n".encode())
            await writer.drain()
            raw.append(writer)  # and never read
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for writer in raw:
            writer.close()
    print(received[0], flush=True)


async def _ingest(tmp: Path, host: str, port: int, dsn: str, pings: int, reading: int,
                  stalled: int) -> tuple[float, int]:
    from tests.console_harness import issue_tokens
    from tests.daemon_harness import config_dir, load, running_daemon

    loaded = load(config_dir(tmp), host, port, dsn)
    async with running_daemon(loaded) as daemon:
        token = (await issue_tokens(dsn, ["cmd-futian"]))["cmd-futian"]
        url = f"http://127.0.0.1:{daemon.http_port}/console/api/events"
        browsers = None
        if reading or stalled:
            browsers = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--read-streams", url, "--token", token,
                "--reading", str(reading), "--stalled", str(stalled),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            assert browsers.stdout is not None
            assert (await browsers.stdout.readline()).strip() == b"ready"
        start = datetime.now(UTC) - timedelta(seconds=pings + 60)
        messages = _messages(pings, start)
        before = _processed()
        began = time.perf_counter()
        publisher = threading.Thread(target=_publish_in_thread, args=(host, port, messages))
        publisher.start()
        while _processed() - before < pings:  # noqa: ASYNC110 (a metric, not an event)
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - began
        await asyncio.to_thread(publisher.join)
        received = 0
        if browsers is not None:
            out, _ = await browsers.communicate(b"")
            received = int(out.split()[-1])
    return pings / elapsed, received


def with_services(pings: int) -> None:
    from daemon.localservices import MosquittoProcess, PostgresProcess

    with tempfile.TemporaryDirectory(prefix="emon-bench-console-") as tmp_name:
        tmp = Path(tmp_name)
        with MosquittoProcess(tmp / "mosquitto") as broker, \
                PostgresProcess(tmp / "postgres") as postgres:
            rows = []
            for label, reading, stalled in (("no stream", 0, 0), ("50 + 5 stalled", 50, 5),
                                            ("no stream", 0, 0), ("50 + 5 stalled", 50, 5)):
                dsn = postgres.create_database(f"bench_{len(rows)}")
                rate, received = asyncio.run(_ingest(tmp / f"r{len(rows)}", broker.host,
                                                     broker.port, dsn, pings, reading, stalled))
                rows.append((label, rate, received))
                print(f"  daemon ingest, {label:15s}: {rate:8.0f} pings/s "
                      f"(position events read by the streams: {received})")
            base = (rows[0][1] + rows[2][1]) / 2
            loaded = (rows[1][1] + rows[3][1]) / 2
            print(f"  with streams / without: {loaded / base:.2f} (mean of two alternating runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=20_000)
    parser.add_argument("--services", action="store_true",
                        help="also run the real daemon with private Mosquitto and PostgreSQL")
    parser.add_argument("--read-streams", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--reading", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stalled", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_streams:
        asyncio.run(_read_streams(args.read_streams, args.token, args.reading, args.stalled))
        return 0
    in_process(args.pings)
    asyncio.run(coalescing(args.pings))
    if args.services:
        print(f"real daemon, {args.pings} MQTT pings (QoS 1) from a publisher thread:")
        with_services(args.pings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
