"""Scenarios with expectations: every scenario in simulators/scenarios/ offline, the diff of
a failing one, the CLI's exit codes, and scenarios live against a real daemon and broker."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.localservices import MosquittoProcess, find_free_port
from simulators import cli as sim_cli
from simulators.scenario import (
    ScenarioError,
    compile_scenario,
    format_result,
    load_scenario,
    load_scenario_config,
    run_offline,
    scenario_files,
)
from simulators.scenario_live import LiveTarget, run_live

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "simulators" / "scenarios"
STARTUP_TIMEOUT_SECONDS = 60.0

@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker of this test alone: the traffic of simulators (thousands of QoS 1 messages)
    must not queue up in other tests' persistent sessions on the session-wide broker."""
    with MosquittoProcess(tmp_path / "mosquitto") as broker:
        yield broker



def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


ALL = scenario_files([SCENARIOS])


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_scenario_offline(path: Path) -> None:
    scenario = load_scenario(path)
    loaded = load_scenario_config(scenario)
    result = run_offline(compile_scenario(scenario, loaded.core), loaded)
    report = format_result(result, verbose=True)
    if scenario.model.pending is not None:
        # A known gap: it must still fail; when it passes, `pending` must go.
        assert not result.passed, f"pending scenario now passes, remove `pending`:\n{report}"
        pytest.xfail(f"pending: {scenario.model.pending.strip()}")
    assert result.passed, report
    assert result.messages > 0


def test_every_existing_rule_has_a_scenario() -> None:
    """A new RuleId needs a scenario in simulators/scenarios/ (pending until it works)."""
    from alerts.model import RuleId

    covered = {load_scenario(p).model.rule for p in ALL}
    assert {r.value for r in RuleId} <= covered


def test_scenarios_are_deterministic() -> None:
    scenario = load_scenario(SCENARIOS / "duplicates_and_skew.yaml")
    config = load_scenario_config(scenario).core
    first = compile_scenario(scenario, config).messages
    assert first == compile_scenario(scenario, config).messages
    topics = [m.topic for m in first]
    # 30 % duplicates: some messages are delivered twice, byte for byte.
    assert len({(m.topic, repr(m.payload)) for m in first}) < len(first)
    assert all(t == "emon/v1/devices/tag-s001/location" for t in topics)


def _broken(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(f"config: {SCENARIOS / 'config'}\n" + body, encoding="utf-8")
    return path


def test_failing_expectations_give_a_readable_diff_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _broken(tmp_path, """
name: wrong_expectations
start: "10:00"
devices:
  tag-s001: {start: home-s001}
timeline:
  - {id: opens, at: "10:15", event: strap_open}
  - {stay: 5m}
expect:
  - {rule: strap_open, tier: high, subject: s001, after: opens, within: 1m}
  - {rule: boundary_exit, subject: s001}
""")
    exit_code = sim_cli_main(["sim", "run", str(path), "--expect"])
    out = capsys.readouterr().out
    assert exit_code == 1
    assert "FAIL wrong_expectations" in out
    assert "- expected     strap_open/high subject s001 after 'opens'" in out
    assert "- expected     boundary_exit subject s001 after start" in out
    assert "MISSING" in out
    # The critical strap alert that did come is shown as unexpected.
    assert "+ unexpected   opened strap_open/critical subject s001 at 10:15:00" in out


def sim_cli_main(argv: list[str]) -> int:
    from daemon.cli import main

    return main(argv)


def test_passing_and_pending_scenarios_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    # checkin_late waits for issue 5 (silence was the pending example until issue 4).
    exit_code = sim_cli_main(["sim", "run", str(SCENARIOS / "strap_open.yaml"),
                              str(SCENARIOS / "checkin_late.yaml"), "--expect"])
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "PASS strap_open" in out
    assert "PENDING checkin_late" in out
    assert "1 passed, 0 failed, 1 pending" in out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\ndevices: {tag-s001: {start: home-s001}}\ntimeline:\n  - {at: '10:00'}\n",
         "exactly one action"),
        ("name: x\ndevices: {nobody: {start: home-s001}}\n", "not in the config's roster"),
        ("name: x\ndevices: {tag-s001: {start: nowhere}}\n", "neither a place"),
        ("name: x\ndevices: {s001.phone: {start: home-s001, protocol: owntracks}}\n"
         "timeline:\n  - {event: strap_open}\n", "sends locations only"),
        ("name: x\ndevices: {tag-s001: {start: home-s001}}\nexpect:\n"
         "  - {rule: strap_open, after: nope}\n", "names no step id"),
        ("name: x\nbogus: 1\ndevices: {tag-s001: {start: home-s001}}\n", "Extra inputs"),
        ("name: x\ndevices: {tag-s001: {start: home-s001, ping_interval: soon}}\n",
         "not a duration"),
    ],
)
def test_invalid_scenarios_are_refused_with_a_reason(
    tmp_path: Path, body: str, message: str
) -> None:
    path = _broken(tmp_path, body)

    def load_and_compile() -> None:
        scenario = load_scenario(path)
        compile_scenario(scenario, load_scenario_config(scenario).core)

    with pytest.raises(ScenarioError, match=message):
        load_and_compile()
    assert sim_cli_main(["sim", "run", str(path), "--expect"]) == 2


def test_scenario_messages_as_a_replay_file(tmp_path: Path) -> None:
    out = tmp_path / "strap.jsonl"
    assert sim_cli_main(["sim", "run", str(SCENARIOS / "strap_open.yaml"), "--out",
                         str(out)]) == 0
    replay = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "replay", "--quiet", "--config",
         str(SCENARIOS / "config"), str(out)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    assert '"rule": "strap_open"' in replay.stdout
    assert '"transition": "opened"' in replay.stdout


# ---------------------------------------------------------------------- live


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return b'"ok": true' in response.read()
    except OSError:
        return False


@pytest.fixture
def scenario_daemon(
    private_broker: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`emon run` on the scenario suite's config, on the session broker and a fresh database."""
    http_port = find_free_port()
    env = dict(os.environ)
    env.update(EMON_MQTT_HOST=private_broker.host, EMON_MQTT_PORT=str(private_broker.port),
               EMON_DATABASE_URL=pg_dsn, EMON_HTTP_PORT=str(http_port))
    # A client id of its own: the daemon's persistent session on the session-wide broker must
    # not inherit messages queued for another test's daemon (or leave some for it).
    config_dir = tmp_path / "config"
    shutil.copytree(SCENARIOS / "config", config_dir)
    settings = config_dir / "settings.yaml"
    settings.write_text(
        settings.read_text(encoding="utf-8").replace(
            "client_id: emon-daemon", f"client_id: emon-scenarios-{uuid.uuid4().hex[:8]}"
        ),
        encoding="utf-8",
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config_dir)],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = STARTUP_TIMEOUT_SECONDS
            while not _healthy(http_port):
                assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
                deadline -= 0.2
                assert deadline > 0, "daemon not healthy in time"
                time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            sys.stderr.write(log_path.read_text(errors="replace")[-3000:])


@pytest.mark.e2e
@pytest.mark.services
async def test_scenarios_live_against_a_real_daemon(
    scenario_daemon: subprocess.Popen[bytes], private_broker: MosquittoProcess
) -> None:
    # Different subjects and devices, so the runs do not share device state in the daemon;
    # owntracks_phone goes through the daemon's OwnTracks subscription. co_offender_gathering
    # runs first: gatherings are judged on one grid of instants for the whole fleet, which
    # never goes back (an older day's fixes would be dropped as late).
    for name in ("co_offender_gathering", "strap_open", "owntracks_phone", "exclusion_entry"):
        scenario = load_scenario(SCENARIOS / f"{name}.yaml")
        result = await run_live(
            scenario, load_scenario_config(scenario),
            LiveTarget(private_broker.host, private_broker.port, timeout_s=30.0,
                       client_id=f"test-live-{name}"),
        )
        assert result.passed, format_result(result, verbose=True)
        assert result.mode == "live"
    assert scenario_daemon.poll() is None


@pytest.mark.e2e
@pytest.mark.services
async def test_live_run_reports_missing_alerts(
    scenario_daemon: subprocess.Popen[bytes], private_broker: MosquittoProcess, tmp_path: Path
) -> None:
    path = _broken(tmp_path, """
name: live_wrong
start: "10:00"
devices:
  tag-s002: {start: home-s002}
timeline:
  - {at: "10:05", stay: 5m}
expect:
  - {rule: strap_open, subject: s002}
""")
    scenario = load_scenario(path)
    result = await run_live(scenario, load_scenario_config(scenario),
                            LiveTarget(private_broker.host, private_broker.port, timeout_s=2.0))
    assert not result.passed
    assert "MISSING" in format_result(result)


def test_sim_parser_keeps_the_scripted_day_default() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sim_cli.add_parser(sub)
    args = parser.parse_args(["sim", "--out", "-"])
    assert args.func is sim_cli.run
    args = parser.parse_args(["sim", "run", "x.yaml", "--expect"])
    assert args.expect is True
    assert asyncio.iscoroutinefunction(run_live)
