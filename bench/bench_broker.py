"""Benchmark: the shipped Mosquitto configuration at scale (config/mosquitto/).

    .venv/bin/python bench/bench_broker.py [--queued 200000] [--accounts 100000]

Two measurements, each on a private broker started from config/mosquitto/mosquitto.conf
(ports and paths substituted, as in the tests), with a throw-away CA made by openssl:

1. Queue memory. The daemon's persistent session subscribes, goes offline, and a device
   publishes `--queued` pings of the wire contract's size (~110 bytes) over the
   loopback listener. Reported: broker RSS growth per queued message, extrapolated to
   the configured max_queued_messages (3,000,000: 100,000 devices x 1/min x 30 min);
   the persistence file's size after a clean restart (SIGTERM saves it) per message; and
   how fast the session drains when it comes back.
2. Accounts. Password and ACL files for `--accounts` devices (hashes made here, as
   `emon broker passwords` does), then: the time to generate them, the broker's start
   time with them, one device's connect time, and the PBKDF2 cost per connect at the
   shipped iteration count against a "stretched" 10,000 (what a reconnect storm of the
   whole fleet after a broker restart costs in CPU).
3. ACL layout. Broker start time with one `user` block per device against two `pattern`
   lines (why `emon broker acl` writes patterns).

Numbers move with load on the machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.broker import (
    PBKDF2_ITERATIONS,
    Account,
    AccountRole,
    Grant,
    device_topics,
    hash_password,
    new_password,
    render_acl,
    render_password_file,
)
from daemon.localservices import LOOPBACK_HOST, ConfiguredMosquittoProcess, LocalServiceError
from tests.broker_helpers import (
    BROKER_TEMPLATE,
    CONFIG_DIR,
    make_broker_files,
    make_pki,
)

PING = (b'{"ts":"2026-11-20T09:59:30+08:00","lat":22.5445,"lon":114.0462,"acc":6.0,'
        b'"src":"gnss","batt":81}')
CONFIGURED_MAX_QUEUED = 3_000_000
PUBLISH_WINDOW = 500  # QoS 1 publishes in flight from the bench publisher
STRETCHED_ITERATIONS = 10_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _publish_many(client: aiomqtt.Client, topic: str, count: int) -> None:
    for start in range(0, count, PUBLISH_WINDOW):
        batch = range(start, min(start + PUBLISH_WINDOW, count))
        await asyncio.gather(*(client.publish(topic, PING, qos=1) for _ in batch))


async def queue_memory(base: Path, queued: int) -> None:
    pki = make_pki(base / "pki")
    files = make_broker_files(CONFIG_DIR, base / "files")
    creds = files.credentials
    broker = ConfiguredMosquittoProcess(
        base / "broker", BROKER_TEMPLATE, password_file=files.password_file,
        acl_file=files.acl_file, certfile=pki.server_cert, keyfile=pki.server_key,
    )  # fmt: skip

    def login(account: str, clean: bool = True) -> aiomqtt.Client:
        return aiomqtt.Client(LOOPBACK_HOST, broker.port, username=account,
                              password=creds[account], identifier=account,
                              clean_session=clean, timeout=60)

    with broker:
        assert broker.pid is not None
        async with login("emon-daemon", clean=False) as session:
            await session.subscribe("emon/v1/devices/+/location", qos=1)
        before = rss_bytes(broker.pid)
        started = time.perf_counter()
        async with login("tag-s001") as device:
            await _publish_many(device, "emon/v1/devices/tag-s001/location", queued)
        publish_s = time.perf_counter() - started
        after = rss_bytes(broker.pid)
        per_message = (after - before) / queued
        broker.restart()  # SIGTERM writes the persistence file
        db = next((broker.run_dir / "persistence").glob("*.db"))
        db_size = db.stat().st_size
        started = time.perf_counter()
        received = 0
        async with login("emon-daemon", clean=False) as session:
            async for _ in session.messages:
                received += 1
                if received == queued:
                    break
        drain_s = time.perf_counter() - started
    print(f"queued {queued} pings of {len(PING)} B for the offline daemon session "
          f"(published in {publish_s:.1f} s, {queued / publish_s:,.0f}/s)")
    print(f"  broker RSS +{(after - before) / 1e6:.1f} MB = {per_message:.0f} B per message; "
          f"at {CONFIGURED_MAX_QUEUED:,}: {per_message * CONFIGURED_MAX_QUEUED / 1e9:.2f} GB")
    print(f"  persistence file {db_size / 1e6:.1f} MB = {db_size / queued:.0f} B per message; "
          f"at {CONFIGURED_MAX_QUEUED:,}: {db_size / queued * CONFIGURED_MAX_QUEUED / 1e9:.2f} GB")
    print(f"  all {received} received after the broker restart, drained in {drain_s:.1f} s "
          f"({received / drain_s:,.0f}/s, one client acknowledging each)")


async def accounts_at_scale(base: Path, count: int) -> None:
    pki = make_pki(base / "pki")
    started = time.perf_counter()
    device_ids = [f"tag-{i:06d}" for i in range(count)]
    accounts = [
        Account("emon-daemon", AccountRole.DAEMON, (Grant("read", "emon/v1/devices/+/location"),)),
        *(Account(d, AccountRole.DEVICE, tuple(Grant("write", t) for t in device_topics(d)))
          for d in device_ids),
    ]
    passwords = {a.name: new_password() for a in accounts}
    entries = {name: hash_password(password) for name, password in passwords.items()}
    password_file, acl_file = base / "passwd", base / "acl"
    password_file.write_text(render_password_file(entries, "bench"), encoding="utf-8")
    acl_file.write_text(render_acl(accounts, "bench"), encoding="utf-8")
    generate_s = time.perf_counter() - started
    broker = ConfiguredMosquittoProcess(
        base / "broker", BROKER_TEMPLATE, password_file=password_file, acl_file=acl_file,
        certfile=pki.server_cert, keyfile=pki.server_key,
    )  # fmt: skip
    started = time.perf_counter()
    with broker:
        start_s = time.perf_counter() - started
        assert broker.pid is not None
        rss = rss_bytes(broker.pid)
        last = device_ids[-1]
        started = time.perf_counter()
        async with aiomqtt.Client(LOOPBACK_HOST, broker.port, username=last,
                                  password=passwords[last], identifier=last) as device:
            await device.publish(f"emon/v1/devices/{last}/location", PING, qos=1)
        connect_s = time.perf_counter() - started
    print(f"{count:,} device accounts: files generated in {generate_s:.1f} s "
          f"(passwd {password_file.stat().st_size / 1e6:.1f} MB, "
          f"acl {acl_file.stat().st_size / 1e6:.1f} MB)")
    print(f"  broker started with them in {start_s:.2f} s, RSS {rss / 1e6:.0f} MB; "
          f"the last device connected and published in {connect_s * 1000:.1f} ms")
    salt = os.urandom(12)
    for iterations in (PBKDF2_ITERATIONS, STRETCHED_ITERATIONS):
        rounds = 2000 if iterations < 1000 else 50
        started = time.perf_counter()
        for _ in range(rounds):
            hashlib.pbkdf2_hmac("sha512", b"x" * 32, salt, iterations)
        per_connect = (time.perf_counter() - started) / rounds
        print(f"  PBKDF2-SHA512 x {iterations:>6}: {per_connect * 1e6:8.0f} µs per connect; "
              f"the whole fleet reconnecting: {per_connect * count:6.1f} CPU-s")


def per_user_acl_start(base: Path, counts: list[int]) -> None:
    """Why devices get ACL patterns: start time with one `user` block per device (what a
    naive generator writes) against the same accounts by pattern."""
    pki = make_pki(base / "pki")
    entry = hash_password("x")
    for count in counts:
        names = [f"tag-{i:06d}" for i in range(count)]
        accounts = [
            Account(n, AccountRole.DEVICE, tuple(Grant("write", t) for t in device_topics(n)))
            for n in names
        ]
        password_file = base / f"passwd-{count}"
        password_file.write_text(render_password_file(dict.fromkeys(names, entry), "bench"))
        blocks = base / f"acl-blocks-{count}"
        blocks.write_text("".join(
            f"user {a.name}\n" + "".join(f"topic {g.access} {g.topic}\n" for g in a.grants)
            for a in accounts
        ))
        patterns = base / f"acl-patterns-{count}"
        patterns.write_text(render_acl(accounts, "bench"))
        timings = []
        for acl in (blocks, patterns):
            broker = ConfiguredMosquittoProcess(
                base / f"broker-{acl.name}", BROKER_TEMPLATE, password_file=password_file,
                acl_file=acl, certfile=pki.server_cert, keyfile=pki.server_key,
            )  # fmt: skip
            started = time.perf_counter()
            try:
                with broker:
                    timings.append(f"{time.perf_counter() - started:6.2f} s")
            except LocalServiceError:
                timings.append("no start within 30 s")
        print(f"  {count:>7,} devices: broker start with per-user blocks {timings[0]}, "
              f"with patterns {timings[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--acl-blocks", default="5000,10000,20000",
                        help="device counts for the per-user ACL comparison ('' to skip)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="emon-bench-broker-") as tmp:
        asyncio.run(queue_memory(Path(tmp) / "queue", args.queued))
        asyncio.run(accounts_at_scale(Path(tmp) / "accounts", args.accounts))
        if args.acl_blocks:
            print("ACL: one user block per device vs two patterns")
            per_user_acl_start(Path(tmp) / "acl", [int(n) for n in args.acl_blocks.split(",")])


if __name__ == "__main__":
    main()
