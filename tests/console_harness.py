"""The console's end-to-end pieces: subjects moving along paths (published to the real
broker), officers' tokens, and a headless Chromium (Debian's `chromium` driven by Selenium
through Debian's `chromium-driver`), shared by tests/test_console_*.py and
scripts/console_screenshot.py."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from daemon.store.lifecycle_repo import LifecycleStore, new_token
from daemon.store.pool import open_pool
from simulators.scripted_day import LonLat, offset_m

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags that work as root on a machine with no display and no internet: no sandbox (root),
# no GPU, no QUIC, and none of Chromium's own calls home.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--force-device-scale-factor=1",
)
BROWSER_WAIT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Fix:
    at: datetime
    where: LonLat
    accuracy_m: float = 8.0


def path_fixes(
    waypoints: Sequence[tuple[datetime, LonLat]], step: timedelta, accuracy_m: float = 8.0
) -> list[Fix]:
    """Fixes every `step` along straight legs between timed waypoints (inclusive ends)."""
    fixes: list[Fix] = []
    for (t0, a), (t1, b) in itertools.pairwise(waypoints):
        span = (t1 - t0).total_seconds()
        at = t0
        while at < t1:
            f = (at - t0).total_seconds() / span if span > 0 else 1.0
            fixes.append(Fix(at, LonLat(a.lon + (b.lon - a.lon) * f, a.lat + (b.lat - a.lat) * f),
                             accuracy_m))
            at += step
    last_at, last = waypoints[-1]
    fixes.append(Fix(last_at, last, accuracy_m))
    return fixes


def jitter(fixes: Sequence[Fix], metres: float, seed: int) -> list[Fix]:
    """GNSS-like scatter (deterministic), within `metres` — less than each fix's accuracy."""
    rng = random.Random(seed)
    return [
        Fix(f.at, offset_m(f.where, rng.uniform(-metres, metres), rng.uniform(-metres, metres)),
            f.accuracy_m)
        for f in fixes
    ]


async def publish_fixes(host: str, port: int, device_id: str, fixes: Sequence[Fix]) -> None:
    async with aiomqtt.Client(host, port, identifier=f"t-dev-{uuid.uuid4().hex[:8]}") as client:
        for fix in fixes:
            payload = {"ts": fix.at.isoformat(), "lat": round(fix.where.lat, 7),
                       "lon": round(fix.where.lon, 7), "acc": fix.accuracy_m, "src": "gnss"}
            await client.publish(
                f"emon/v1/devices/{device_id}/location", json.dumps(payload), qos=1
            )


async def issue_tokens(dsn: str, officers: Sequence[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    async with open_pool(dsn, min_size=1, max_size=1) as pool:
        store = LifecycleStore(pool)
        for officer in officers:
            tokens[officer] = new_token()
            await store.create_token(officer, "console test", None, tokens[officer])
    return tokens


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a new empty profile; fails (not skips) if it is missing."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            raise AssertionError(
                f"{binary} missing: run `bash scripts/bootstrap.sh` (installs Debian's "
                "chromium and chromium-driver)"
            )
    profile = tempfile.mkdtemp(prefix="emon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) never runs.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # --window-size includes the window's frame; this makes the page exactly that size.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False,
        })
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(
    driver: webdriver.Chrome, seconds: float = BROWSER_WAIT_SECONDS
) -> WebDriverWait[webdriver.Chrome]:
    # Elements go stale when the page reloads (it does after signing in) or re-renders.
    return WebDriverWait(
        driver, seconds, poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def sign_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    """Open the console, give the token, and wait until the live stream is connected."""
    driver.get(base + "/console/")
    box = wait(driver).until(lambda d: d.find_element(By.ID, "login-token"))
    wait(driver).until(lambda d: box.is_displayed())
    box.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    # The page reloads after signing in. An element found in the old document and read in
    # the new one fails, and Chromium 156 reports that as a generic "Node ... does not belong
    # to the document" rather than a stale element: read the state in one script, in
    # whichever document is current, and poll through the reload's errors.
    WebDriverWait(
        driver, BROWSER_WAIT_SECONDS, poll_frequency=0.05,
        ignored_exceptions=(WebDriverException,),
    ).until(
        lambda d: d.execute_script(
            "const e = document.getElementById('link-state');"
            " return e !== null && e.dataset.state === 'live';"
        )
        is True
    )


def browser_problems(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Errors the page logged (script errors, refused by the content security policy), but
    not the 401 of the page's first "am I signed in?" question before signing in."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [
        e for e in entries
        if e.get("level") == "SEVERE"
        and not (e.get("source") == "network" and "/console/api/me " in str(e.get("message"))
                 and "status of 401" in str(e.get("message")))
    ]
