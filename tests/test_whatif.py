"""`emon config diff`: stored pings from a real PostgreSQL, replayed through two configs."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
import yaml

from alerts.model import RuleId, Tier, TransitionKind
from daemon.configfiles import load_config
from daemon.replay import Replayer, ReplayMessage
from daemon.store import PingWriter, migrate
from daemon.whatif import (
    EXIT_DIFFERENT,
    EXIT_SAME,
    EXIT_TROUBLE,
    Change,
    add_diff_arguments,
    compare,
    run_diff,
)
from daemon.wire import decode
from simulators.publisher import encode_payload
from simulators.scripted_day import (
    ERRANDS_S002,
    LOCAL_TZ,
    SUBJECT_OF_DEVICE,
    SimMessage,
    scripted_day,
)
from tests.configkit import copy_example_config, feature, square

pytestmark = pytest.mark.services

DAY = date(2026, 11, 20)
# 09:00-18:00 local holds the errands (10:00), the strap blip (10:15), the school visit
# (15:00) and leaving the district (17:16); with the default hour of warm-up, ten hours of
# pings are replayed twice, a few seconds on the test machine.
START = datetime.combine(DAY, time(9), tzinfo=LOCAL_TZ)
END = datetime.combine(DAY, time(18), tzinfo=LOCAL_TZ)
WARMUP = timedelta(minutes=60)


async def _store_day(dsn: str, messages: list[SimMessage]) -> None:
    await migrate(dsn)
    async with PingWriter(dsn) as writer:
        for message in messages:
            observation = decode(message.topic, encode_payload(message.payload), message.at)
            await writer.put(observation, SUBJECT_OF_DEVICE[observation.device_id], "recorded")
        await writer.flush()


def _changed_config(directory: Path) -> Path:
    """The example config with three changes whose effect on the scripted day is known."""
    copy_example_config(directory)
    subjects = yaml.safe_load((directory / "subjects.yaml").read_text())
    by_id = {s["id"]: s for s in subjects["subjects"]}
    # 1. s003 no longer has the school as exclusion zone: its exclusion alert disappears.
    by_id["s003"]["exclusion_zones"] = []
    # 2. s002's daytime errands spot becomes an exclusion zone: a new alert appears.
    by_id["s002"]["exclusion_zones"].append({"zone": "errands-s002"})
    (directory / "subjects.yaml").write_text(yaml.safe_dump(subjects, sort_keys=False))
    exclusions = directory / "zones" / "exclusions.wgs84.geojson"
    data = json.loads(exclusions.read_text())
    data["features"].append(
        feature("errands-s002", "exclusion", square(ERRANDS_S002.lon, ERRANDS_S002.lat, 150))
    )
    exclusions.write_text(json.dumps(data))
    # 3. Leaving the district becomes critical: the same alert, another tier.
    settings = yaml.safe_load((directory / "settings.yaml").read_text())
    settings["rules"]["tiers"] = {"boundary_exit": "critical"}
    (directory / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return directory


async def test_diff_shows_alerts_that_appear_disappear_and_shift(
    pg_dsn: str, tmp_path: Path
) -> None:
    messages = scripted_day(DAY)
    await _store_day(pg_dsn, messages)
    old = load_config(copy_example_config(tmp_path / "old"))
    new = load_config(_changed_config(tmp_path / "new"))

    result = await compare(old, new, pg_dsn, START, END, warmup=WARMUP)

    replayed = [m for m in messages if START - WARMUP <= m.at < END]
    assert result.pings + result.events == len(replayed)
    summary = {(c.change, c.subject_id, c.rule, c.zone_id) for c in result.changes}
    assert summary == {
        (Change.DISAPPEARS, "s003", RuleId.EXCLUSION_ENTRY, "school-futian-1"),
        (Change.APPEARS, "s002", RuleId.EXCLUSION_ENTRY, "errands-s002"),
        (Change.SHIFTED, "s003", RuleId.BOUNDARY_EXIT, "district-futian"),
    }
    shifted = next(c for c in result.changes if c.change is Change.SHIFTED)
    assert shifted.old is not None
    assert shifted.new is not None
    assert (shifted.old.tier, shifted.new.tier) == (Tier.HIGH, Tier.CRITICAL)
    assert shifted.old.at == shifted.new.at
    appeared = next(c for c in result.changes if c.change is Change.APPEARS)
    assert appeared.new is not None
    # The errands begin at 10:00 local; the alert opens once the dwell confirms the entry.
    assert time(10, 0) <= appeared.new.at.astimezone(LOCAL_TZ).time() <= time(10, 15)
    assert result.unchanged == 1  # strap_open at 10:15

    # Rows read back from PostgreSQL decide exactly as the original messages do.
    direct = Replayer(old.core, old.settings.tick_interval_seconds)
    opened: list[str] = []
    for message in replayed:
        wire = ReplayMessage(message.topic, encode_payload(message.payload), message.at)
        opened += [t.alert.alert_id for t in direct.feed(wire)
                   if t.kind is TransitionKind.OPENED and t.at >= START]
    opened += [t.alert.alert_id for t in direct.finish(END)
               if t.kind is TransitionKind.OPENED and START <= t.at < END]
    assert sorted(o.alert_id for o in result.old_alerts) == sorted(opened)
    assert len(opened) == 3


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_diff_arguments(parser)
    return parser.parse_args(list(argv))


async def test_diff_command_output_exit_status_and_progress(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _store_day(pg_dsn, scripted_day(DAY))
    old = copy_example_config(tmp_path / "old")
    new = _changed_config(tmp_path / "new")
    # Progress every message: the day is short, but the output must show it.
    monkeypatch.setattr("daemon.whatif.PROGRESS_INTERVAL_SECONDS", 0.0)
    out, err = io.StringIO(), io.StringIO()
    period = ["--from", START.isoformat(), "--to", END.isoformat(), "--database-url", pg_dsn]

    status = await asyncio.to_thread(run_diff, _args(str(old), str(new), *period), out, err)

    assert status == EXIT_DIFFERENT
    lines = out.getvalue().splitlines()
    assert lines[2] == (
        "alerts opened: old 3, new 3; 1 appear (+), 1 disappear (-), 1 shifted (~), 1 unchanged"
    )
    body = "\n".join(lines[3:])
    assert re.search(
        r"subject s002\n  \+ exclusion_entry  2026-11-20 10:\d\d:\d\d\+08:00  critical "
        r"errands-s002  Entered exclusion zone errands-s002", body
    ), body
    assert re.search(r"  - exclusion_entry  2026-11-20 15:\d\d:\d\d\+08:00  critical "
                     r"school-futian-1", body), body
    assert re.search(r"  ~ boundary_exit    2026-11-20 17:\d\d:\d\d\+08:00 -> 2026-11-20 "
                     r"17:\d\d:\d\d\+08:00  high->critical district-futian", body), body
    progress = err.getvalue().splitlines()
    # 08:00 local (the warm-up) is 00:00 UTC.
    assert progress[0] == "config diff: 1 rows replayed, at 2026-11-20 00:00 UTC (0%)"
    assert progress[-2].endswith("(100%)")
    assert progress[-1] == "config diff: done, 1,800 pings and 2 events replayed"

    one_hour = ["--from", START.replace(hour=15).isoformat(), "--to",
                START.replace(hour=16).isoformat(), "--database-url", pg_dsn, "--warmup-minutes",
                "10", "--quiet", "--json"]
    out = io.StringIO()
    same = await asyncio.to_thread(run_diff, _args(str(old), str(old), *one_hour), out,
                                   io.StringIO())
    assert same == EXIT_SAME
    body_json = json.loads(out.getvalue())
    assert body_json["changes"] == []
    assert body_json["unchanged"] == body_json["old"]["alerts_opened"] == 1  # the school


async def test_diff_command_refuses_an_invalid_config_and_a_bad_period(
    pg_dsn: str, tmp_path: Path
) -> None:
    await migrate(pg_dsn)
    old = copy_example_config(tmp_path / "old")
    broken = copy_example_config(tmp_path / "broken")
    text = (broken / "subjects.yaml").read_text().replace("officer: off-chen", "officer: nobody")
    (broken / "subjects.yaml").write_text(text)
    err = io.StringIO()
    args = _args(str(old), str(broken), "--from", START.isoformat(), "--to", END.isoformat(),
                 "--database-url", pg_dsn)
    assert await asyncio.to_thread(run_diff, args, io.StringIO(), err) == EXIT_TROUBLE
    assert "officer not defined" in err.getvalue()
    assert "new config" in err.getvalue()

    err = io.StringIO()
    backwards = _args(str(old), str(old), "--from", END.isoformat(), "--to", START.isoformat(),
                      "--database-url", pg_dsn, "--quiet")
    assert await asyncio.to_thread(run_diff, backwards, io.StringIO(), err) == EXIT_TROUBLE
    assert "--to must be after --from" in err.getvalue()

    with pytest.raises(SystemExit):
        _args(str(old), str(old), "--from", "2026-11-20T00:00", "--to", END.isoformat())


def test_period_times_need_an_offset() -> None:
    from daemon.whatif import parse_instant

    assert parse_instant("2026-11-20T00:00+08:00") == datetime(2026, 11, 19, 16, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="no UTC offset"):
        parse_instant("2026-11-20T00:00")
