"""Benchmark: the pure core (`Pipeline.handle` + ticks, as `emon replay` runs it) on a fleet.

    .venv/bin/python bench/bench_replay.py [--subjects 100] [--hours 24] [--profile out.txt]

Builds a simulated fleet (`emon sim fleet`: each subject a tag and a phone, home, work and
exclusion zones, a permitted district, a fix every 15-60 s per device), parses every line
first, then times the pipeline alone on one core: CPU seconds (`time.process_time`, since
on a shared 2-core machine the wall clock mostly measures the other processes) for
decode + evaluate + alert lifecycle + ticks on the daemon's grid. Prints pings/s and
microseconds per message; with `--profile` it also writes pyinstrument's text profile.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.configfiles import load_config
from daemon.replay import Replayer, ReplayMessage, parse_line
from geofence.engine import Engine
from simulators.cli_fleet import write_fleet_config
from simulators.fleet import build_fleet, fleet_messages
from simulators.scripted_day import write_jsonl

FLEET_DAY = date(2026, 11, 20)
TICK_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    messages: int
    transitions: int
    cpu_s: float
    digest: str  # of every transition's repr: equal digests, identical decisions

    @property
    def pings_per_s(self) -> float:
        return self.messages / self.cpu_s if self.cpu_s > 0 else 0.0


def fleet_replay_input(subjects: int, seed: int, work_dir: Path) -> tuple[Path, list[str]]:
    """A fleet's config directory and its one day of replay lines (JSONL text)."""
    fleet = build_fleet(subjects, seed)
    config_dir = work_dir / "config"
    write_fleet_config(fleet, config_dir)
    jsonl = work_dir / "fleet.jsonl"
    write_jsonl(fleet_messages(fleet, FLEET_DAY, 1), jsonl)
    return config_dir, jsonl.read_text().splitlines()


def replay_cpu(
    config_dir: Path,
    lines: list[str],
    limit: int | None = None,
    profile: Path | None = None,
    presence_skip: bool = True,
) -> ReplayResult:
    """Replay `lines` (parsed beforehand, not timed) through a fresh pipeline.
    `presence_skip=False`: every fix measured against every zone (A/B of the skip)."""
    config = load_config(config_dir).core
    messages: list[ReplayMessage] = [parse_line(line) for line in lines[:limit]]
    replayer = Replayer(config, TICK_INTERVAL_SECONDS)
    if not presence_skip:
        replayer.pipeline.engine = Engine(config, presence_skip=False)
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    begin = time.process_time()
    produced = []
    for message in messages:
        produced += replayer.feed(message)
    if messages:
        produced += replayer.finish(messages[-1].received_at + timedelta(minutes=1))
    cpu_s = time.process_time() - begin
    digest = hashlib.sha256("\n".join(map(repr, produced)).encode()).hexdigest()[:16]
    if profiler is not None and profile is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return ReplayResult(len(messages), len(produced), cpu_s, digest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N lines")
    parser.add_argument("--profile", type=Path, default=None, help="pyinstrument text here")
    parser.add_argument("--no-presence-skip", action="store_true",
                        help="measure every fix against every zone (A/B of the skip)")
    parser.add_argument("--input", type=Path, nargs=2, metavar=("CONFIG_DIR", "JSONL"),
                        help="an existing fleet (emon sim fleet --write-config --out)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emon-bench-replay-") as tmp:
        begin = time.perf_counter()
        if args.input:
            config_dir, lines = args.input[0], args.input[1].read_text().splitlines()
        else:
            config_dir, lines = fleet_replay_input(args.subjects, args.seed, Path(tmp))
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print(f"fleet: {args.subjects} subjects, {len(lines):,} messages for one day "
              f"(built in {time.perf_counter() - begin:.0f} s)")
        result = replay_cpu(config_dir, lines, args.limit, args.profile,
                            presence_skip=not args.no_presence_skip)
    print(f"replay of the pure core: {result.messages:,} messages in {result.cpu_s:.1f} CPU s "
          f"= {result.pings_per_s:,.0f} msg/s on one core "
          f"({1e6 / max(result.pings_per_s, 1e-9):.1f} us/msg), "
          f"{result.transitions:,} alert transitions (digest {result.digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
