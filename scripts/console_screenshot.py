"""Take docs/console.png: the officer console in headless Chromium on a real daemon.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console.png]

Starts a private Mosquitto and PostgreSQL (daemon.localservices), the daemon with the
repository's config, and plays a short scene in the last hour: s001 at home (ok), s002's
strap opened and the alert acknowledged by Officer Li (owned), s003 cycling from home into
the school's exclusion zone (an open critical alert). Signs in as Supervisor Wang (who sees
the whole team), shows s003's track and saves the page. Needs scripts/bootstrap.sh first
(the console bundle, chromium, chromium-driver).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from daemon.localservices import MosquittoProcess, PostgresProcess  # noqa: E402
from simulators.scripted_day import HOME_S001, HOME_S002, HOME_S003, SCHOOL_FUTIAN_1  # noqa: E402
from tests.console_harness import (  # noqa: E402
    chromium,
    issue_tokens,
    jitter,
    path_fixes,
    publish_fixes,
    sign_in,
    wait,
)
from tests.daemon_harness import (  # noqa: E402
    config_dir,
    eventually,
    load,
    publish_event,
    running_daemon,
)

WIDTH, HEIGHT = 1440, 900


async def scene(out: Path, run_dir: Path) -> None:
    broker = MosquittoProcess(run_dir / "mosquitto")
    postgres = PostgresProcess(run_dir / "postgres")
    broker.start()
    postgres.start()
    try:
        dsn = postgres.create_database("console_screenshot")
        loaded = load(config_dir(run_dir), broker.host, broker.port, dsn)
        async with running_daemon(loaded) as daemon:
            tokens = await issue_tokens(dsn, ["off-li", "sup-wang"])
            now = datetime.now(UTC).replace(microsecond=0)
            minute = timedelta(minutes=1)
            s001 = path_fixes([(now - 60 * minute, HOME_S001), (now - minute, HOME_S001)],
                              3 * minute)
            s002 = path_fixes([(now - 60 * minute, HOME_S002), (now - 2 * minute, HOME_S002)],
                              3 * minute)
            s003 = path_fixes([
                (now - 60 * minute, HOME_S003), (now - 40 * minute, HOME_S003),
                (now - 12 * minute, SCHOOL_FUTIAN_1), (now - minute, SCHOOL_FUTIAN_1),
            ], 90 * timedelta(seconds=1))
            for device, fixes, seed in (("tag-s001", s001, 1), ("tag-s002", s002, 2),
                                        ("tag-s003", s003, 3)):
                await publish_fixes(broker.host, broker.port, device, jitter(fixes, 5.0, seed))
            await publish_event(broker.host, broker.port, "tag-s002", "strap_open",
                                now - 25 * minute)
            book = daemon._pipeline.book
            await eventually(
                lambda: {a.subject_id for a in book.unresolved()} >= {"s002", "s003"},
                within=20, what="alerts of s002 and s003",
            )
            strap = next(a for a in book.unresolved() if a.subject_id == "s002")
            base = f"http://127.0.0.1:{daemon.http_port}"
            async with aiohttp.ClientSession() as http, http.post(
                f"{base}/alerts/{strap.alert_id}/ack",
                json={"note": "called him: strap caught on a door, checking tomorrow"},
                headers={"Authorization": f"Bearer {tokens['off-li']}"},
            ) as answer:
                answer.raise_for_status()
            await asyncio.to_thread(_photograph, base, tokens["sup-wang"], out)
    finally:
        broker.stop()
        postgres.stop()


def _photograph(base: str, token: str, out: Path) -> None:
    with chromium(WIDTH, HEIGHT) as driver:
        sign_in(driver, base, token)
        wait(driver).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.subject-marker")) == 3
        )
        row = driver.find_element(By.CSS_SELECTOR, '#subjects tr[data-subject-id="s003"]')
        row.find_element(By.CSS_SELECTOR, ".track-button").click()
        wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "path.track"))
        time.sleep(0.5)
        # Back to the whole team (the track stays drawn).
        driver.find_element(By.CSS_SELECTOR, ".fit-all a").click()
        time.sleep(1.0)  # let the map finish its zoom animation
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"saved {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emon-shot-") as run_dir:
        asyncio.run(scene(args.out.resolve(), Path(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
