"""The officer console end to end: headless Chromium (Debian's chromium, driven by Selenium
through chromium-driver) on the real daemon, real Mosquitto and real PostgreSQL.

- a simulated breach (a tag walking into the school's exclusion zone) appears on the map
  and in the alerts list within seconds;
- acknowledging and resolving it in the page changes its state in the database;
- an officer cannot see another officer's subject (map, list, track, live updates), and
  their supervisor sees both;
- a tile server is used when (and only when) settings.yaml names one.

Selenium blocks, and the daemon runs in this test's event loop, so every browser step runs
in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from daemon.app import Daemon
from daemon.localservices import MosquittoProcess
from simulators.scripted_day import HOME_S001, HOME_S003, SCHOOL_FUTIAN_1
from tests.console_harness import (
    Fix,
    browser_problems,
    chromium,
    issue_tokens,
    path_fixes,
    publish_fixes,
    sign_in,
    wait,
)
from tests.daemon_harness import config_dir, eventually, load, publish_event, running_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.services]

# "Within seconds": from the device's publish to the page, on a noisy 2-core machine.
APPEARS_WITHIN_SECONDS = 5.0


def _png_1x1() -> bytes:
    """A valid 1x1 transparent PNG (what a tile server returns, in miniature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\x00\x00\x00\x00\x00")  # filter byte + one RGBA pixel
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


ONE_PIXEL_PNG = _png_1x1()
_T = TypeVar("_T")


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    dsn: str
    mosquitto: MosquittoProcess

    async def publish(self, device: str, fixes: list[Fix]) -> None:
        await publish_fixes(self.mosquitto.host, self.mosquitto.port, device, fixes)


@pytest.fixture
async def env(mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    loaded = load(config_dir(tmp_path), mosquitto.host, mosquitto.port, pg_dsn)
    async with running_daemon(loaded) as daemon:
        tokens = await issue_tokens(pg_dsn, ["off-li", "off-chen", "sup-wang"])
        now = datetime.now(UTC).replace(microsecond=0)
        minute = timedelta(minutes=1)
        e = Env(daemon, f"http://127.0.0.1:{daemon.http_port}", tokens, pg_dsn, mosquitto)
        # At home until ten minutes ago (recent enough to be "ok" on the map).
        for device, home in (("tag-s001", HOME_S001), ("tag-s003", HOME_S003)):
            await e.publish(device, path_fixes([(now - 40 * minute, home),
                                                (now - 10 * minute, home)], 5 * minute))
        await eventually(lambda: _count(pg_dsn, "SELECT count(*) FROM pings", 14),
                         what="pings stored")
        yield e


async def _count(dsn: str, query: str, at_least: int, *params: Any) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query, list(params))
        row = await cur.fetchone()
        return row is not None and row[0] >= at_least


async def in_browser(step: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.to_thread(step, *args)


def _css(driver: webdriver.Chrome, selector: str) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _marker_inside_zone(driver: webdriver.Chrome, subject: str, zone: str) -> bool:
    """The subject's marker is drawn over the zone's polygon (screen coordinates)."""
    result = driver.execute_script(
        """
        const m = document.querySelector(`path.subject-${arguments[0]}`);
        const z = document.querySelector(`path.zone-${arguments[1]}`);
        if (!m || !z) return false;
        const a = m.getBoundingClientRect(), b = z.getBoundingClientRect();
        const x = a.left + a.width / 2, y = a.top + a.height / 2;
        return x >= b.left - 1 && x <= b.right + 1 && y >= b.top - 1 && y <= b.bottom + 1;
        """,
        subject, zone,
    )
    return bool(result)


async def test_a_breach_appears_within_seconds_and_is_acknowledged_and_resolved_in_the_page(
    env: Env,
) -> None:
    card_css = '.alert-card[data-subject-id="s001"][data-rule="exclusion_entry"]'
    with chromium() as driver:
        await in_browser(sign_in, driver, env.base, env.tokens["off-li"])
        await in_browser(wait(driver).until, lambda d: _css(d, "path.subject-s001.status-ok"))
        assert not _css(driver, ".alert-card")
        assert not _css(driver, "img.leaflet-tile")  # no tile server: a plain background

        # s001 walks from home into the school (exclusion zone): two fixes inside confirm it.
        now = datetime.now(UTC).replace(microsecond=0)
        breach = path_fixes([(now - timedelta(minutes=3), SCHOOL_FUTIAN_1),
                             (now - timedelta(minutes=1), SCHOOL_FUTIAN_1)], timedelta(minutes=1))
        published = time.monotonic()
        await env.publish("tag-s001", breach)
        await in_browser(wait(driver, APPEARS_WITHIN_SECONDS).until,
                         lambda d: _css(d, card_css))
        in_list = time.monotonic() - published
        await in_browser(wait(driver, APPEARS_WITHIN_SECONDS).until,
                         lambda d: _css(d, "path.subject-s001.status-alert"))
        on_map = time.monotonic() - published
        print(f"breach in the list after {in_list:.2f} s, red on the map after {on_map:.2f} s")
        assert await in_browser(_marker_inside_zone, driver, "s001", "school-futian-1")
        card = driver.find_element(By.CSS_SELECTOR, card_css)
        alert_id = card.get_attribute("data-alert-id")
        assert card.get_attribute("data-state") == "open"
        assert card.find_element(By.CSS_SELECTOR, ".tier").text == "CRITICAL"
        assert "school-futian-1" in card.find_element(By.CSS_SELECTOR, ".reason").text
        assert "nobody owns it" in card.find_element(By.CSS_SELECTOR, ".state").text
        # The page is fed when the daemon decides; the database records it just after.
        await eventually(
            lambda: _count(env.dsn, "SELECT count(*) FROM alerts WHERE alert_id = %s AND"
                           " state = 'open'", 1, alert_id),
            within=5, what="the alert recorded",
        )

        # Acknowledge in the page: the database has it, and the card says who owns it.
        await in_browser(card.find_element(By.CSS_SELECTOR, "button.ack").click)
        await eventually(
            lambda: _count(env.dsn, "SELECT count(*) FROM alerts WHERE alert_id = %s AND"
                           " state = 'acknowledged' AND acknowledged_by = 'off-li'", 1, alert_id),
            within=5, what="acknowledgement stored",
        )
        await in_browser(wait(driver).until,
                         lambda d: d.find_element(By.CSS_SELECTOR, card_css)
                         .get_attribute("data-state") == "acknowledged")
        assert "ACKNOWLEDGED by off-li" in driver.find_element(
            By.CSS_SELECTOR, f"{card_css} .state").text
        assert await _count(env.dsn, "SELECT count(*) FROM audit_log WHERE action = 'alert.ack'"
                            " AND object = %s AND actor = 'off-li' AND source LIKE 'console %%'",
                            1, alert_id)

        # Resolve with a disposition and a note.
        def resolve() -> None:
            card = driver.find_element(By.CSS_SELECTOR, card_css)
            card.find_element(By.CSS_SELECTOR, "button.resolve-open").click()
            Select(card.find_element(By.CSS_SELECTOR, "select.disposition")).select_by_value(
                "confirmed_violation")
            card.find_element(By.CSS_SELECTOR, "input.note").send_keys("seen at the school gate")
            card.find_element(By.CSS_SELECTOR, "button.resolve-confirm").click()

        await in_browser(resolve)
        await eventually(
            lambda: _count(env.dsn, "SELECT count(*) FROM alerts WHERE alert_id = %s AND"
                           " state = 'resolved' AND disposition = 'confirmed_violation'"
                           " AND resolved_by = 'off-li'", 1, alert_id),
            within=5, what="resolution stored",
        )
        assert await _count(env.dsn, "SELECT count(*) FROM alert_history WHERE alert_id = %s"
                            " AND kind = 'resolved' AND note = 'seen at the school gate'",
                            1, alert_id)
        await in_browser(wait(driver).until, lambda d: not _css(d, card_css))
        assert await in_browser(browser_problems, driver) == []


def _visible_subjects(driver: webdriver.Chrome) -> set[str]:
    rows = _css(driver, "#subjects tr[data-subject-id]")
    return {str(r.get_attribute("data-subject-id")) for r in rows}


def _fix_cell(driver: webdriver.Chrome, subject: str) -> str:
    cell = driver.find_element(By.CSS_SELECTOR, f'#subjects tr[data-subject-id="{subject}"] .fix')
    return str(cell.get_attribute("title"))


async def test_an_officer_cannot_see_another_officers_subject_and_the_supervisor_sees_both(
    env: Env,
) -> None:
    # s001 (Officer Li's) has an open alert before Officer Chen signs in.
    await publish_event(env.mosquitto.host, env.mosquitto.port, "tag-s001", "strap_open")
    await eventually(lambda: env.daemon._pipeline.book.unresolved(), what="s001's alert")
    with chromium() as driver:
        await in_browser(sign_in, driver, env.base, env.tokens["off-chen"])
        await in_browser(wait(driver).until, lambda d: _css(d, "path.subject-s003"))
        assert _visible_subjects(driver) == {"s003"}
        assert not _css(driver, "path.subject-s001")
        assert not _css(driver, "path.subject-s002")
        assert not _css(driver, ".alert-card")
        assert _css(driver, "path.zone-home-s003")
        assert not _css(driver, "path.zone-home-s001")
        options = Select(driver.find_element(By.ID, "track-subject")).options
        assert [o.get_attribute("value") for o in options] == ["s003"]
        assert await in_browser(browser_problems, driver) == []
        # Even asked directly from the page, another officer's track is "not found".
        status = await in_browser(
            driver.execute_async_script,
            "fetch('/console/api/subjects/s001/track').then(r => arguments[0](r.status));",
        )
        assert status == 404

        # Live: s001 moves and opens another alert; s003 moves after it. When s003's move
        # is on the page, s001's would have been too: nothing of s001 may be there.
        before = await in_browser(_fix_cell, driver, "s003")
        now = datetime.now(UTC).replace(microsecond=0)
        await env.publish("tag-s001", [Fix(now - timedelta(seconds=30), HOME_S001)])
        await publish_event(env.mosquitto.host, env.mosquitto.port, "tag-s001", "strap_closed")
        await env.publish("tag-s003", [Fix(now, HOME_S003)])
        await in_browser(wait(driver).until, lambda d: _fix_cell(d, "s003") != before)
        assert not _css(driver, "path.subject-s001")
        assert not _css(driver, ".alert-card")
        assert _visible_subjects(driver) == {"s003"}
        problems = await in_browser(browser_problems, driver)
        assert [p["message"].split(" - ")[0].rsplit("/console", 1)[1] for p in problems] == [
            "/api/subjects/s001/track"]  # the refusal asked for above, and nothing else

    # Their supervisor sees the whole team: both subjects, and s001's alert.
    with chromium() as driver:
        await in_browser(sign_in, driver, env.base, env.tokens["sup-wang"])
        await in_browser(wait(driver).until,
                         lambda d: _css(d, '.alert-card[data-subject-id="s001"]'))
        assert _visible_subjects(driver) == {"s001", "s002", "s003"}
        assert _css(driver, "path.subject-s001")
        assert _css(driver, "path.subject-s003")


async def test_a_configured_tile_server_is_used(
    mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> None:
    """A tile server on loopback, named in settings.yaml: the page draws its tiles (the
    content security policy lets exactly that origin in), and asks nobody else."""
    requested: list[str] = []

    async def tile(request: web.Request) -> web.Response:
        requested.append(request.path)
        return web.Response(body=ONE_PIXEL_PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/tiles/{z}/{x}/{y}.png", tile)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        directory = config_dir(tmp_path)
        settings_path = directory / "settings.yaml"
        settings = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
        settings["console"] = {
            "tile_url": f"http://127.0.0.1:{port}/tiles/{{z}}/{{x}}/{{y}}.png",
            "tile_attribution": "test tiles",
        }
        settings_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        loaded = load(directory, mosquitto.host, mosquitto.port, pg_dsn)
        async with running_daemon(loaded) as daemon:
            tokens = await issue_tokens(pg_dsn, ["off-li"])
            with chromium() as driver:
                await in_browser(sign_in, driver, f"http://127.0.0.1:{daemon.http_port}",
                                 tokens["off-li"])
                await in_browser(wait(driver).until,
                                 lambda d: _css(d, "img.leaflet-tile-loaded"))
                assert "test tiles" in driver.find_element(
                    By.CSS_SELECTOR, ".leaflet-control-attribution").text
                assert await in_browser(browser_problems, driver) == []
        assert requested
        assert all(path.startswith("/tiles/") for path in requested)
    finally:
        await runner.cleanup()
