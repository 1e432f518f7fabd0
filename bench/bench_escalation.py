"""Escalation throughput: the pure decision vs a stored sweep on real PostgreSQL.

    .venv/bin/python bench/bench_escalation.py --dsn "host=... dbname=scratch" [--alerts 5000]

Records N opened alerts (one transaction per 500, as the recorder would batch under load),
then sweeps step 1 and step 2 of the ladder for all of them in batches of 200 (the daemon's
SWEEP_BATCH_ROWS), and prints alerts/s for: the pure `advance` alone, recording, and the
sweep (claim FOR UPDATE SKIP LOCKED + decide + history + outbox, one transaction per batch).
The database must be scratch: the bench migrates it and leaves its rows there.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

from alerts.escalation import advance, start
from alerts.lifecycle import AlertBook
from alerts.model import Finding, FindingKind, RuleId, Tier
from daemon.notifiers.routing import Router
from daemon.policyfile import PoliciesFile, compile_alerting
from daemon.store.lifecycle_repo import LifecycleStore
from daemon.store.migrations import migrate
from daemon.store.pool import open_pool

RECORD_BATCH = 500


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--alerts", type=int, default=5000)
    args = parser.parse_args()
    policies = PoliciesFile.model_validate({})
    officers = {"off-li": ("officer", "sup-wang"), "sup-wang": ("supervisor", "cmd"),
                "cmd": ("command", None)}
    config = compile_alerting(policies, officers)
    policy = config.policy(Tier.CRITICAL)
    router = Router(policies, {})
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    started = time.perf_counter()
    for i in range(args.alerts):
        state = start(f"a{i}", Tier.CRITICAL, t0)
        state, _ = advance(state, policy, t0, officer_id="off-li", directory=config.directory)
        advance(state, policy, t0 + timedelta(seconds=300), officer_id="off-li",
                directory=config.directory)
    pure = 2 * args.alerts / (time.perf_counter() - started)

    book = AlertBook(lambda _s: "off-li", config.tier_policies())
    transitions = [
        t for i in range(args.alerts)
        for t in book.apply(Finding(f"s{i}", f"tag-{i}", RuleId.STRAP_OPEN, None,
                                    Tier.CRITICAL, FindingKind.RAISED, t0, {"event": {}}, "bench"))
    ]
    await migrate(args.dsn)
    async with open_pool(args.dsn, min_size=1, max_size=2) as pool:
        store = LifecycleStore(pool, timeout_seconds=120)
        started = time.perf_counter()
        for i in range(0, len(transitions), RECORD_BATCH):
            await store.record(transitions[i:i + RECORD_BATCH], config, router)
        record = args.alerts / (time.perf_counter() - started)
        rates = []
        for now in (t0, t0 + timedelta(seconds=300)):
            started = time.perf_counter()
            done = 0
            while got := await store.sweep(now, config, router, lambda *_: None):
                done += len(got)
            assert done == args.alerts, done
            rates.append(done / (time.perf_counter() - started))
    print(f"alerts: {args.alerts}")
    print(f"pure advance:         {pure:10.0f} steps/s")
    print(f"record (open + state): {record:9.0f} alerts/s")
    for n, rate in enumerate(rates, start=1):
        print(f"sweep step {n} (stored):  {rate:8.0f} steps/s"
              f"  ({pure / rate:.0f}x slower than pure)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
