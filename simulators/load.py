"""`emon sim load`: thousands of devices over many MQTT connections at a target rate.

A load generator must never be the bottleneck of the benchmark it drives. Measured on this
2-core machine against a local Mosquitto (bench/load_generator.py and the notes in
docs/simulators.md): paho's publish costs ~60 us of Python per message (~9-11k msg/s per
process, QoS 0 or 1); gmqtt ~16k msg/s per process, most of it in one socket write per
message, which on loopback runs the broker's receive path and wakes it (~36 us each). So the
generator speaks the few MQTT 3.1.1 packets a publisher needs itself (`_Publisher`) and
writes every message due in one 5 ms tick on one connection in one write: ~60k QoS 0 msg/s
from one process, and QoS 1 up to what Mosquitto acknowledges (~25-30k msg/s here).
Several processes (`--processes`) share the connections when one core is not enough.

Rate counting: with QoS 1 a message counts when the broker's PUBACK arrives; with QoS 0 when
it is handed to the connection. In-flight QoS 1 messages are bounded per connection
(`MAX_INFLIGHT_PER_CONNECTION`); when the window is full the generator falls behind its
target and says so, it never queues without bound.

Payloads are valid wire-v1 fixes (`ts` now, a small random walk around each device's home),
from devices `tag-f00001`... that `--write-config` puts in a roster, so a daemon under test
evaluates and stores every message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import multiprocessing.sharedctypes
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TextIO

_LOGGER = logging.getLogger(__name__)

DEFAULT_RATE: Final = 20_000.0
DEFAULT_DEVICES: Final = 5_000
DEFAULT_CONNECTIONS: Final = 8
DEFAULT_PROCESSES: Final = 1
"""One generator process leaves the other core to the broker (and the daemon)."""
DEFAULT_DURATION_S: Final = 30.0
TICK_S: Final = 0.005
"""Pacing granularity: each tick publishes what is due since the start."""
MAX_INFLIGHT_PER_CONNECTION: Final = 2_000
MAX_CATCH_UP_S: Final = 0.5
"""A worker that falls further behind than this forgets the backlog (counted as behind)."""
CONNECT_TIMEOUT_S: Final = 30.0
DRAIN_TIMEOUT_S: Final = 10.0
REPORT_INTERVAL_S: Final = 1.0
BAR_WIDTH: Final = 30
WALK_STEP_DEG: Final = 0.00002
"""Per-message random-walk step (~2 m): plausible movement for the daemon's speed filter."""
# Slots of each worker in the shared counter array.
SLOT_PUBLISHED, SLOT_ACKED, SLOT_BEHIND, SLOT_CONNECTED, SLOT_ERRORS = range(5)
SLOTS: Final = 5
KEEPALIVE_S: Final = 60
MQTT_CONNECT, MQTT_CONNACK, MQTT_PUBACK = 1, 2, 4
PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


class LoadError(Exception):
    """The load generator could not run (broker unreachable, a worker failed)."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    host: str
    port: int
    devices: int = DEFAULT_DEVICES
    connections: int = DEFAULT_CONNECTIONS
    rate: float = DEFAULT_RATE
    duration_s: float = DEFAULT_DURATION_S
    processes: int = DEFAULT_PROCESSES
    qos: int = 1
    seed: int = 1
    client_prefix: str = "emon-load"

    def validate(self) -> None:
        if not 1 <= self.processes <= self.connections <= self.devices:
            raise LoadError("need 1 <= processes <= connections <= devices")
        if self.qos not in (0, 1):
            raise LoadError("qos must be 0 or 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise LoadError("rate must be positive")


@dataclass(frozen=True, slots=True)
class LoadResult:
    seconds: float
    published: int
    acknowledged: int
    behind: int
    errors: int
    per_second: tuple[float, ...]

    @property
    def mean_rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds > 0 else 0.0

    def steady_rate(self) -> float:
        """Mean of the per-second rates without the first and last second (ramp, drain)."""
        inner = self.per_second[1:-1] or self.per_second
        return sum(inner) / len(inner) if inner else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_rate"] = round(self.mean_rate, 1)
        out["steady_rate"] = round(self.steady_rate(), 1)
        return out


def device_id(index: int) -> str:
    """The n-th load device (1-based): the wearable of fleet subject f{n:05d}."""
    return f"tag-f{index:05d}"


# ---------------------------------------------------------------------- worker process


def _worker_main(
    plan: LoadPlan, worker: int, counters: Any, go: Any, stop: Any
) -> None:
    """Entry point of one worker process (spawned): its connections, its share of the rate."""
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_worker(plan, worker, counters, go, stop))
    except Exception:  # the parent sees the error count and a non-zero exit code
        counters[worker * SLOTS + SLOT_ERRORS] += 1
        _LOGGER.exception("load worker %d failed", worker)
        raise


class _Publisher(asyncio.Protocol):
    """A minimal MQTT 3.1.1 publisher: CONNECT, PUBLISH (QoS 0/1), PUBACK, DISCONNECT.

    Hand-written on purpose (see the module docstring): every library client makes one
    socket write per message, and on loopback each write runs the broker's receive path
    and wakes it, ~36 us per message measured. Here all messages due in one tick on one
    connection go out in one write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.acked = 0
        self.inflight = 0
        self._buffer = bytearray()
        self._next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before CONNACK"))
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            length, header = 0, 1
            multiplier = 1
            while True:
                if header >= len(buffer):
                    return  # the remaining length is not complete yet
                byte = buffer[header]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                header += 1
                if not byte & 0x80:
                    break
            if len(buffer) < header + length:
                return
            kind = buffer[0] >> 4
            body = bytes(buffer[header : header + length])
            del buffer[: header + length]
            if kind == MQTT_CONNACK:
                if len(body) == 2 and body[1] == 0:
                    self.connected.set_result(None)
                else:
                    self.connected.set_exception(ConnectionError(f"CONNACK refused: {body!r}"))
            elif kind == MQTT_PUBACK:
                self.acked += 1
                self.inflight -= 1

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _str16(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    body = _str16("MQTT") + bytes([4, 0x02]) + keepalive_s.to_bytes(2, "big") + _str16(client_id)
    return bytes([MQTT_CONNECT << 4]) + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    """`topic` already length-prefixed (`_str16`)."""
    if qos:
        length = len(topic) + 2 + len(payload)
        return b"".join((b"\x32", _remaining_length(length), topic,
                         packet_id.to_bytes(2, "big"), payload))
    return b"".join((b"\x30", _remaining_length(len(topic) + len(payload)), topic, payload))


async def _worker(plan: LoadPlan, worker: int, counters: Any, go: Any, stop: Any) -> None:
    base = worker * SLOTS
    loop = asyncio.get_running_loop()
    mine = [c for c in range(plan.connections) if c % plan.processes == worker]
    publishers: list[_Publisher] = []
    for connection in mine:
        _, publisher = await asyncio.wait_for(
            loop.create_connection(_Publisher, plan.host, plan.port), CONNECT_TIMEOUT_S
        )
        assert publisher.transport is not None
        publisher.transport.write(
            connect_packet(f"{plan.client_prefix}-{connection}", KEEPALIVE_S)
        )
        await asyncio.wait_for(publisher.connected, CONNECT_TIMEOUT_S)
        publishers.append(publisher)
        counters[base + SLOT_CONNECTED] += 1

    # Devices are spread over all connections round-robin; this worker owns some of them.
    rng = random.Random(f"emon-load:{plan.seed}:{worker}")
    slots: list[tuple[int, bytes, list[float]]] = []
    for index in range(1, plan.devices + 1):
        connection = (index - 1) % plan.connections
        if connection % plan.processes != worker:
            continue
        topic = _str16(f"emon/v1/devices/{device_id(index)}/location")
        position = [114.0 + rng.uniform(0.0, 0.08), 22.52 + rng.uniform(0.0, 0.04)]
        slots.append((mine.index(connection), topic, position))
    rate = plan.rate * len(mine) / plan.connections
    qos = plan.qos

    await asyncio.to_thread(go.wait)
    start = loop.time()
    next_ping = start + KEEPALIVE_S / 2
    published = behind = 0
    cursor = 0
    count = len(slots)
    uniform = rng.uniform
    batches = [bytearray() for _ in publishers]
    while not stop.is_set():
        now = loop.time()
        due = int(rate * (now - start)) - published - behind
        if due > rate * MAX_CATCH_UP_S:
            behind += due - int(rate * MAX_CATCH_UP_S)
            due = int(rate * MAX_CATCH_UP_S)
        wall = time.time()
        for _ in range(due):
            conn, topic, position = slots[cursor]
            cursor = cursor + 1 if cursor + 1 < count else 0
            publisher = publishers[conn]
            if qos:
                if publisher.inflight >= MAX_INFLIGHT_PER_CONNECTION:
                    behind += 1
                    continue
                publisher.inflight += 1
            position[0] += uniform(-WALK_STEP_DEG, WALK_STEP_DEG)
            position[1] += uniform(-WALK_STEP_DEG, WALK_STEP_DEG)
            payload = (
                f'{{"ts":{wall:.3f},"lat":{position[1]:.6f},"lon":{position[0]:.6f},'
                f'"acc":8.0,"src":"gnss","batt":80}}'
            ).encode()
            batches[conn] += publish_packet(topic, payload, qos,
                                            publisher.packet_id() if qos else 0)
            published += 1
        for publisher, batch in zip(publishers, batches, strict=True):
            if batch:
                assert publisher.transport is not None
                if publisher.transport.is_closing():
                    raise LoadError("the broker closed a connection")
                publisher.transport.write(bytes(batch))
                batch.clear()
        if now >= next_ping:
            for publisher in publishers:
                assert publisher.transport is not None
                publisher.transport.write(PINGREQ)
            next_ping = now + KEEPALIVE_S / 2
        acked = sum(p.acked for p in publishers)
        counters[base + SLOT_PUBLISHED] = published
        counters[base + SLOT_ACKED] = acked if qos else published
        counters[base + SLOT_BEHIND] = behind
        await asyncio.sleep(TICK_S)
    # Drain: wait for the outstanding PUBACKs, then disconnect cleanly.
    deadline = loop.time() + DRAIN_TIMEOUT_S
    while qos and loop.time() < deadline and any(p.inflight > 0 for p in publishers):
        counters[base + SLOT_ACKED] = sum(p.acked for p in publishers)
        await asyncio.sleep(TICK_S)
    counters[base + SLOT_ACKED] = sum(p.acked for p in publishers) if qos else published
    for publisher in publishers:
        assert publisher.transport is not None
        publisher.transport.write(DISCONNECT)
        publisher.transport.close()
    for publisher in publishers:
        await asyncio.wait_for(publisher.closed.wait(), DRAIN_TIMEOUT_S)


# ---------------------------------------------------------------------- parent


def _bar(fraction: float) -> str:
    filled = max(0, min(BAR_WIDTH, round(fraction * BAR_WIDTH)))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def run_load(plan: LoadPlan, progress: TextIO | None = sys.stderr) -> LoadResult:
    """Run the generator for `plan.duration_s` seconds; print the rate reached each second."""
    plan.validate()
    context = multiprocessing.get_context("spawn")
    counters = context.RawArray("q", plan.processes * SLOTS)
    go, stop = context.Event(), context.Event()
    workers = [
        context.Process(target=_worker_main, args=(plan, w, counters, go, stop),
                        name=f"emon-load-{w}", daemon=True)
        for w in range(plan.processes)
    ]
    for process in workers:
        process.start()

    def total(slot: int) -> int:
        return sum(counters[w * SLOTS + slot] for w in range(plan.processes))

    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S + 10
        while total(SLOT_CONNECTED) < plan.connections:
            if total(SLOT_ERRORS) or any(not p.is_alive() for p in workers):
                raise LoadError(f"a worker failed to connect to {plan.host}:{plan.port}")
            if time.monotonic() > deadline:
                raise LoadError("workers did not connect in time")
            time.sleep(0.05)
        if progress is not None:
            progress.write(
                f"emon sim load: {plan.devices} devices, {plan.connections} connections, "
                f"{plan.processes} processes, QoS {plan.qos}, target {plan.rate:,.0f} msg/s "
                f"for {plan.duration_s:g} s -> {plan.host}:{plan.port}\n"
            )
        go.set()
        started = time.monotonic()
        per_second: list[float] = []
        last_acked, last_at = 0, started
        next_report = started + REPORT_INTERVAL_S
        while True:
            time.sleep(max(0.0, next_report - time.monotonic()))
            now = time.monotonic()
            acked = total(SLOT_ACKED)
            rate = (acked - last_acked) / (now - last_at)
            per_second.append(rate)
            if progress is not None:
                elapsed = now - started
                progress.write(
                    f"  {elapsed:5.1f}s {_bar(elapsed / plan.duration_s)} "
                    f"{rate:>9,.0f} msg/s (target {plan.rate:,.0f})  total {acked:>11,}  "
                    f"in flight {total(SLOT_PUBLISHED) - acked:>6,}  behind "
                    f"{total(SLOT_BEHIND):,}\n"
                )
                progress.flush()
            last_acked, last_at = acked, now
            next_report += REPORT_INTERVAL_S
            if now - started >= plan.duration_s:
                break
            if total(SLOT_ERRORS) or any(not p.is_alive() for p in workers):
                raise LoadError("a load worker stopped (see its log above)")
        stop.set()
        for process in workers:
            process.join(DRAIN_TIMEOUT_S + 5)
        seconds = time.monotonic() - started
        failed = [p for p in workers if p.exitcode != 0]
        if failed:
            raise LoadError(f"{len(failed)} load worker(s) failed")
        return LoadResult(seconds, total(SLOT_PUBLISHED), total(SLOT_ACKED),
                          total(SLOT_BEHIND), total(SLOT_ERRORS), tuple(per_second))
    finally:
        stop.set()
        go.set()
        for process in workers:
            process.join(1.0)
            if process.is_alive():
                process.terminate()
                process.join(1.0)


def format_summary(result: LoadResult, plan: LoadPlan) -> str:
    rates = result.per_second
    return (
        f"emon sim load: {result.acknowledged:,} messages "
        f"{'acknowledged (QoS 1 PUBACK)' if plan.qos else 'sent (QoS 0)'} in "
        f"{result.seconds:.1f} s: mean {result.mean_rate:,.0f} msg/s, steady "
        f"{result.steady_rate():,.0f} msg/s (min {min(rates, default=0):,.0f}, max "
        f"{max(rates, default=0):,.0f} per second), target {plan.rate:,.0f}; behind "
        f"{result.behind:,}, errors {result.errors}"
    )


def add_load_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parse_broker: argparse._ActionType,
    positive_float: argparse._ActionType,
    positive_int: argparse._ActionType,
) -> None:
    parser = sub.add_parser(
        "load",
        help="load generator: N devices over M connections at a target aggregate rate",
        description=(
            "Publish location fixes from N devices (tag-f00001, ...) over M MQTT connections "
            "in P processes at a target aggregate rate, printing the rate reached each "
            "second. --write-config DIR writes a roster for those devices."
        ),
    )
    parser.add_argument("--devices", type=positive_int, default=DEFAULT_DEVICES, metavar="N")
    parser.add_argument("--connections", type=positive_int, default=DEFAULT_CONNECTIONS,
                        metavar="M")
    parser.add_argument("--processes", type=positive_int, default=DEFAULT_PROCESSES,
                        metavar="P")
    parser.add_argument("--rate", type=positive_float, default=DEFAULT_RATE,
                        metavar="MSG_PER_S", help=f"target aggregate rate ({DEFAULT_RATE:,.0f})")
    parser.add_argument("--duration", type=positive_float, default=DEFAULT_DURATION_S,
                        metavar="SECONDS")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--broker", type=parse_broker, default="127.0.0.1:1883",
                        metavar="HOST:PORT")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-config", type=Path, metavar="DIR",
                        help="write a config directory whose roster holds the devices, and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no per-second lines")
    parser.set_defaults(func=load_command)


def load_command(args: argparse.Namespace) -> int:
    if args.write_config is not None:
        from simulators.cli_fleet import write_fleet_config
        from simulators.devices import Protocol
        from simulators.fleet import build_fleet

        write_fleet_config(build_fleet(args.devices, args.seed, Protocol.EMON),
                           args.write_config, phones=False)
        sys.stderr.write(f"emon sim load: roster of {args.devices} devices in "
                         f"{args.write_config}\n")
        return EXIT_OK
    host, port = args.broker
    plan = LoadPlan(host, port, args.devices, args.connections, args.rate, args.duration,
                    args.processes, args.qos, args.seed)
    try:
        result = run_load(plan, None if args.quiet else sys.stderr)
    except LoadError as exc:
        sys.stderr.write(f"emon sim load: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("emon sim load: interrupted\n")
        return 130
    if args.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        sys.stdout.write(format_summary(result, plan) + "\n")
    return EXIT_OK

