"""The benchmark drivers' helpers run (tiny sizes; counts, never speed).

The benchmarks themselves are not part of the suite (docs/benchmarks.md): these checks only
keep the helpers `bench/bench_e2e.py` and `bench/bench_replay.py` build on from rotting —
the config they write must load, the profile summary must read py-spy's collapsed stacks,
and the replay measurement must see every message.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from daemon.configfiles import load_config

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_module(name: str) -> Any:
    """A bench script as a module (bench/ is scripts, not a package; imported by path)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_e2e_config_loads_with_the_requested_devices_and_zones(tmp_path: Path) -> None:
    e2e = _bench_module("bench_e2e")
    e2e.write_config(tmp_path, 30, 7, 1)
    core = load_config(tmp_path).core
    probes = e2e.PROBES
    assert len(core.devices) == 30 + probes
    # The district, the scattered exclusion zones and one zone per probe.
    assert len(core.zones) == 1 + 7 + probes
    owned = sum(len(s.exclusions) for s in core.subjects.values())
    assert owned == 7 + probes
    assert core.devices[e2e.device_id(30)].subject_id == "f00030"


def test_profile_summary_reads_collapsed_stacks(tmp_path: Path) -> None:
    e2e = _bench_module("bench_e2e")
    raw = tmp_path / "stacks.txt"
    raw.write_text("main;read;decode 30\nmain;read;observe 60\nmain;idle 10\nnot a stack\n")
    lines = e2e.summarize_profile(raw, top=3)
    assert len(lines) == 3
    assert lines[0].endswith("main")
    assert lines[0].startswith("100.0% incl")
    assert lines[1].startswith(" 90.0% incl   0.0% self  read")
    assert lines[2].startswith(" 60.0% incl  60.0% self  observe")


def test_replay_measurement_counts_every_message(tmp_path: Path) -> None:
    replay = _bench_module("bench_replay")
    config_dir, lines = replay.fleet_replay_input(1, 1, tmp_path)
    result = replay.replay_cpu(config_dir, lines, limit=300)
    assert result.messages == min(300, len(lines))
    assert result.cpu_s > 0
