"""Benchmark: what the decoder's "carriable" check (issue 10) costs per message.

    .venv/bin/python bench/bench_wire.py [--messages 200000] [--rounds 5]

`decode` now walks every parsed payload once (nesting depth, non-finite numbers,
U+0000 and lone surrogates in strings and keys) before validating fields. Measured here,
on payloads shaped like the wire contract's examples:

* plain:     a location fix with the six contract fields (the common case);
* extras:    an OwnTracks-like fix with eight extra fields, one list, one object, and
             a non-ASCII string (the walk's worst realistic case);
* event:     a strap_open event with two attributes.

For each: the time of `decode` and of the check alone (`_check_carriable` on the
already parsed dict), best of the rounds, and the check's share of `decode`. Run on the
project's 2-core box; noisy, so compare the ratio rather than the absolute numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.wire import _check_carriable, decode

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
LOCATION = "emon/v1/devices/tag-s001/location"
EVENT = "emon/v1/devices/tag-s001/event"
PAYLOADS: dict[str, tuple[str, dict[str, object]]] = {
    "plain": (LOCATION, {"ts": "2026-11-20T09:59:30+08:00", "lat": 22.5445, "lon": 114.0462,
                         "acc": 6.0, "src": "gnss", "batt": 81}),
    "extras": (LOCATION, {"ts": 1795139970, "lat": 22.5445, "lon": 114.0462, "acc": 6.0,
                          "batt": 81, "_type": "location", "tid": "s1", "conn": "m",
                          "vel": 3, "alt": 12, "vac": 5, "inregions": ["home", "福田"],
                          "cell": {"mcc": 460, "mnc": 0, "lac": 9360}}),
    "event": (EVENT, {"ts": "2026-11-20T09:59:30+08:00", "type": "strap_open", "rssi": -70,
                      "fw": "2.4.1"}),
}


def best_ns_per_call(function: Callable[[], object], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, "
          f"{args.messages} calls x best of {args.rounds}")
    print(f"{'payload':<8} {'bytes':>5} {'decode µs':>10} {'check µs':>9} {'check share':>12}")
    for name, (topic, body) in PAYLOADS.items():
        raw = json.dumps(body, ensure_ascii=False).encode()
        parsed = json.loads(raw)
        decode_ns = best_ns_per_call(
            functools.partial(decode, topic, raw, NOW), args.messages, args.rounds
        )
        check_ns = best_ns_per_call(
            functools.partial(_check_carriable, parsed), args.messages, args.rounds
        )
        print(f"{name:<8} {len(raw):>5} {decode_ns / 1000:>10.2f} {check_ns / 1000:>9.2f} "
              f"{check_ns / decode_ns:>11.0%}")


if __name__ == "__main__":
    main()
