"""Art. 29 end to end (issue 5 part A) on the real daemon, Mosquitto and PostgreSQL: with
`rules.authorisation.pings: deadletter`, a ping taken after the subject's authorised
monitoring ended is not stored but dead-lettered (reason outside_authorisation), the
officer gets `monitoring_unauthorised`, and another subject's pings are stored as usual;
with `store`, the writer keeps the ping with its `outside_authorisation` flag."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg
import pytest
import yaml

from daemon.localservices import MosquittoProcess
from daemon.store import PingWriter, migrate, open_pool
from geofence.observation import FixSource, LocationFix
from tests.daemon_harness import config_dir, eventually, load, running_daemon

pytestmark = pytest.mark.services

HOME_S001 = (114.04, 22.548)  # s001's home (config/zones/homes.wgs84.geojson)


def _config(tmp_path: Path) -> Path:
    directory = config_dir(tmp_path)
    subjects_path = directory / "subjects.yaml"
    subjects = yaml.safe_load(subjects_path.read_text(encoding="utf-8"))
    today = datetime.now(UTC).date()
    ended = today - timedelta(days=2)
    subjects["subjects"][1]["authorisation"] = {  # s002: ended the day before yesterday
        "periods": [{"start": (ended - timedelta(days=60)).isoformat(), "end": ended.isoformat(),
                     "basis": "left the county without approval", "reference": "T-1"}],
    }
    subjects_path.write_text(yaml.safe_dump(subjects, allow_unicode=True), encoding="utf-8")
    settings_path = directory / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
    settings["rules"]["authorisation"] = {"warn_days": 14, "alerts": "suppress",
                                          "pings": "deadletter"}
    settings_path.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    return directory


async def _stored(dsn: str, device_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pings WHERE device_id = %s", [device_id])
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_ping_outside_authorisation_is_dead_lettered_and_alerted(
    mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> None:
    loaded = load(_config(tmp_path), mosquitto.host, mosquitto.port, pg_dsn)
    async with running_daemon(loaded) as daemon, aiomqtt.Client(
        mosquitto.host, mosquitto.port, identifier=f"t-auth-{uuid.uuid4().hex[:6]}"
    ) as client:
        await client.subscribe("emon/v1/deadletter/tag-s002", qos=0)
        await client.subscribe("emon/v1/alerts/s002", qos=1)
        now = datetime.now(UTC)
        lon, lat = HOME_S001
        for device_id in ("tag-s002", "tag-s001"):
            payload = {"ts": now.isoformat(), "lat": lat, "lon": lon, "acc": 8.0}
            await client.publish(f"emon/v1/devices/{device_id}/location",
                                 json.dumps(payload), qos=1)
        seen: dict[str, dict[str, object]] = {}
        async with asyncio.timeout(15):
            async for message in client.messages:
                body = json.loads(bytes(message.payload))
                seen[message.topic.value] = body
                if len(seen) == 2:
                    break
        dead = seen["emon/v1/deadletter/tag-s002"]
        assert dead["reason"] == "outside_authorisation"
        alert = seen["emon/v1/alerts/s002"]
        assert alert["rule"] == "monitoring_unauthorised"
        assert alert["tier"] == "low"
        # The authorised subject's ping is stored; the other one never is.
        await eventually(lambda: _stored(pg_dsn, "tag-s001"), what="tag-s001 ping stored")
        await daemon._writer.flush()  # type: ignore[union-attr]
        assert await _stored(pg_dsn, "tag-s002") == 0


async def test_writer_flags_pings_outside_authorisation(pg_dsn: str) -> None:
    # Policy `store`: the ping is kept, with the flag (migration 0008); others stay NULL.
    await migrate(pg_dsn)
    now = datetime.now(UTC).replace(microsecond=0)
    lon, lat = HOME_S001

    def ping(device_id: str) -> LocationFix:
        return LocationFix(device_id, now, lat, lon, 8.0, FixSource.GNSS, now)

    async with open_pool(pg_dsn) as pool, PingWriter(pool) as writer:
        await writer.put(ping("tag-out"), "s-out", "v1", outside_authorisation=True)
        await writer.put(ping("tag-in"), "s-in", "v1")
        await writer.flush()
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT device_id, outside_authorisation FROM pings ORDER BY device_id"
        )
        assert await cur.fetchall() == [("tag-in", None), ("tag-out", True)]
