"""The README's demo command works: `emon demo` brings up its own broker and database,
simulates a day, and prints the expected alerts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from simulators.scripted_day import expected_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.services]

REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_SECONDS = 180


def test_demo_prints_every_expected_alert() -> None:
    env = dict(os.environ, EMON_HTTP_PORT="0")
    # Under the repository's .run/ like the real demo (pytest's 0700 temp dirs would make
    # PostgreSQL's data dir move to a stand-in location, which is not what users run).
    (REPO / ".run").mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="test-demo-", dir=REPO / ".run"))
    run_dir.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "demo", "--speed", "100000",
             "--exit-after-day", "--run-dir", str(run_dir)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_SECONDS,
            check=False,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    opened = [line for line in result.stdout.splitlines() if " OPENED " in line]
    assert len(opened) == len(expected_alerts())
    for alert in expected_alerts():
        assert any(
            alert.rule.value in line and f"subject {alert.subject_id} " in line
            and alert.tier.value.upper() in line
            for line in opened
        ), alert
    assert "Open alerts: 4." in result.stdout
