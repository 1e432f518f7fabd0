"""Fault: the system wall clock steps forwards and backwards under a running daemon.

`emon run` runs under libfaketime (LD_PRELOAD, Debian's libfaketime installed by
scripts/bootstrap.sh) with a control file re-read on every clock read
(FAKETIME_TIMESTAMP_FILE + FAKETIME_NO_CACHE); its monotonic clock is left alone
(FAKETIME_DONT_FAKE_MONOTONIC), as a real step leaves CLOCK_MONOTONIC alone. The test
rewrites the file mid-run: +3 h (into the subject's curfew window), back to +0, then
-2 h. Two devices keep reporting twice a second with their own (true) timestamps: tag-s002
away from home, tag-s003 at home.

Taken straight from the wall clock (as before daemon/clock.py; checked once by making
GuardedClock.read return the wall clock), the same run raised 6 alert transitions, the
first `device_silent` for s002 (a gap the daemon never lived through), and refused 16 of
the 80 fixes as future-dated after the -2 h step. Now: no alert at all,
every fix stored once, no fix refused as future-dated, each step logged once at WARNING
with its size and counted in `emon_clock_steps_total{direction}`, and ticks going on through
every phase (without re-arming APScheduler after a step: none for the rest of the run
after the step back; checked once the same way).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.localservices import MosquittoProcess, find_free_port
from simulators.scripted_day import HOME_S003, LOCAL_TZ, NIGHT_OUT_S002
from tests.fault_harness import (
    AlertWatch,
    DaemonProcess,
    DeviceMessage,
    count,
    daemon_config,
    new_client_id,
    publish_reliably,
    report,
)

pytestmark = [pytest.mark.fault, pytest.mark.services, pytest.mark.e2e]

LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
REPORT_INTERVAL_SECONDS = 0.5
# (control file content, seconds to run with it). The first is the baseline.
CLOCK_PHASES = (("+0", 3.0), ("+3h", 4.0), ("+0", 4.0), ("-2h", 3.0))
FORWARD_STEPS, BACKWARD_STEPS = 1, 2
DEVICES = {"tag-s002": NIGHT_OUT_S002, "tag-s003": HOME_S003}
CATCH_UP_SECONDS = 30.0
TICK_SLACK = 2.0  # ticks (1 s apart) a phase may miss: its edges, scheduling on a busy machine


def libfaketime() -> str:
    found = sorted(glob.glob(LIBFAKETIME_GLOB))
    if not found:
        pytest.fail("libfaketime is missing: run scripts/bootstrap.sh (apt-get install "
                    "libfaketime)", pytrace=False)
    return found[0]


def curfew_ahead(settings: dict[str, Any]) -> None:
    settings["tick_interval_seconds"] = 1  # ticks every second: a step is judged at once


def write_curfew_window(config: Path) -> None:
    """night-curfew from 1 h to 5 h from now (the subjects' local time): the +3 h step
    lands inside it; real time stays outside it for the whole test."""
    now_local = datetime.now(LOCAL_TZ)
    start, end = now_local + timedelta(hours=1), now_local + timedelta(hours=5)
    path = config / "schedules.yaml"
    schedules = yaml.safe_load(path.read_text(encoding="utf-8"))
    schedules["schedules"]["night-curfew"] = {
        "windows": [{"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}],
        "exception_dates": [],
    }
    path.write_text(yaml.safe_dump(schedules), encoding="utf-8")


def fix(device: str, at: datetime) -> DeviceMessage:
    place = DEVICES[device]
    body = {"ts": at.isoformat(timespec="milliseconds"), "lat": place.lat, "lon": place.lon,
            "acc": 8.0, "src": "gnss", "batt": 80}
    return DeviceMessage(f"emon/v1/devices/{device}/location", json.dumps(body).encode())


def handled(daemon: DaemonProcess) -> float:
    return daemon.metric_sum("emon_messages_received_total") + daemon.metric_sum(
        "emon_messages_rejected_total"
    )


@pytest.fixture
async def faked_daemon(
    mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[DaemonProcess, Path]]:
    control = tmp_path / "faketime"
    control.write_text(CLOCK_PHASES[0][0] + "\n")
    config = daemon_config(tmp_path, new_client_id("emon-clock"), curfew_ahead)
    write_curfew_window(config)
    env = dict(os.environ)
    env.update(
        EMON_MQTT_HOST=mosquitto.host, EMON_MQTT_PORT=str(mosquitto.port),
        EMON_DATABASE_URL=pg_dsn, EMON_HTTP_PORT=str(find_free_port()),
        EMON_JOURNAL_DIR=str(tmp_path / "journal"),
        LD_PRELOAD=libfaketime(), FAKETIME_TIMESTAMP_FILE=str(control),
        FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    process = DaemonProcess(config, env, tmp_path / "daemon.log")
    try:
        yield process, control
    finally:
        process.cleanup()


async def test_wall_clock_steps_forwards_and_backwards_raise_no_alert(
    faked_daemon: tuple[DaemonProcess, Path], mosquitto: MosquittoProcess, pg_dsn: str
) -> None:
    daemon, control = faked_daemon
    daemon.start()
    await daemon.wait_healthy()
    sent: list[DeviceMessage] = []
    async with AlertWatch(mosquitto.host, mosquitto.port) as alerts:
        loop = asyncio.get_running_loop()
        ticks_by_phase: list[float] = []
        for content, seconds in CLOCK_PHASES:
            ticks_before = await asyncio.to_thread(daemon.metric_sum, "emon_ticks_total")
            control.write_text(content + "\n")
            until = loop.time() + seconds
            while loop.time() < until:
                batch = [fix(device, datetime.now(UTC)) for device in DEVICES]
                acknowledged = await publish_reliably(
                    mosquitto.host, mosquitto.port, batch, client_id=new_client_id("t-dev"),
                )
                assert acknowledged == len(batch)
                sent += batch
                await asyncio.sleep(REPORT_INTERVAL_SECONDS)
            ticks_by_phase.append(
                await asyncio.to_thread(daemon.metric_sum, "emon_ticks_total") - ticks_before
            )
        # Every fix handled: evaluated, or refused (which the assertions below forbid).
        deadline = loop.time() + CATCH_UP_SECONDS
        while await asyncio.to_thread(handled, daemon) < len(sent):
            assert loop.time() < deadline, "the daemon did not handle every fix in time"
            await asyncio.sleep(0.2)
        # Two more ticks after the last fix, with the clock 2 h behind.
        await asyncio.sleep(2.5)
        raised = list(alerts.bodies)
    metrics = await asyncio.to_thread(daemon.metrics)
    assert daemon.stop() == 0
    log = daemon.log_path.read_text(errors="replace")

    stored = await count(pg_dsn, "SELECT count(*), count(DISTINCT (device_id, ts)) FROM pings")
    rejected = sum(v for k, v in metrics.items() if k.startswith("emon_messages_rejected_total"))
    forward = metrics.get('emon_clock_steps_total{direction="forward"}', 0.0)
    backward = metrics.get('emon_clock_steps_total{direction="backward"}', 0.0)
    report("wall clock +3h, +0, -2h", fixes_sent=len(sent), fixes_stored=stored[0],
           refused=int(rejected), alerts=len(raised), steps_forward=int(forward),
           steps_backward=int(backward),
           ticks_per_phase="/".join(f"{t:.0f}" for t in ticks_by_phase))
    assert [(b["transition"], b["rule"], b["subject_id"]) for b in raised] == []
    assert stored == (len(sent), len(sent))
    assert rejected == 0
    assert (forward, backward) == (FORWARD_STEPS, BACKWARD_STEPS)
    # Ticks went on through every phase (APScheduler re-armed after each step; without it,
    # a step backwards stops them for the size of the step).
    for (content, seconds), ticks in zip(CLOCK_PHASES, ticks_by_phase, strict=True):
        assert ticks >= seconds - TICK_SLACK, f"{ticks} ticks in {seconds} s at {content}"
    assert len(re.findall(r"WARNING.*wall clock stepped forward by 108\d\d\.\d s", log)) == 1
    assert len(re.findall(r"WARNING.*wall clock stepped backward by 108\d\d\.\d s", log)) == 1
    assert len(re.findall(r"WARNING.*wall clock stepped backward by 72\d\d\.\d s", log)) == 1
