"""config/policies.yaml: validated whole, one problem per line, secrets from the environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alerts.model import Tier
from daemon.configfiles import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def with_policies(tmp_path: Path, text: str) -> Path:
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    (target / "policies.yaml").write_text(text, encoding="utf-8")
    return target


def problems(directory: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(directory, env=env or {})
    return [str(p) for p in caught.value.problems]


def test_the_shipped_policies_load() -> None:
    loaded = load_config(REPO / "config", env={})
    critical = loaded.core.alerting.policy(Tier.CRITICAL)
    assert [s.targets for s in critical.steps] == [("officer",), ("supervisor",), ("command",)]
    assert loaded.core.alerting.directory.command_for("off-li") == ("cmd-futian",)
    assert loaded.core.alerting.leave_muted_rules == frozenset({"boundary_exit"})


def test_bad_references_and_missing_secrets_are_reported_line_by_line(tmp_path: Path) -> None:
    directory = with_policies(tmp_path, """
tiers:
  critical:
    steps:
      - {targets: [officer, off-nobody], timeout_seconds: 300}
      - {targets: [acknowledger], timeout_seconds: 300}
notifiers:
  ops:
    kind: webhook
    url: https://ops.example.org/hook
    secret_env: EMON_OPS_SECRET
contacts:
  off-ghost:
    - {endpoint: ops}
""")
    found = problems(directory)
    assert (
        "policies.yaml:5: tiers.critical.steps.0.targets = off-nobody: officer not defined"
        in found
    )
    assert any("steps.1.targets = acknowledger" in p for p in found)
    assert "policies.yaml:12: contacts = off-ghost: officer not defined" in found
    assert ("policies.yaml:11: notifiers.ops.secret_env = EMON_OPS_SECRET: environment variable "
            "not set") in found
    # With the secret in the environment only the reference problems remain.
    assert not any("EMON_OPS_SECRET" in p
                   for p in problems(directory, {"EMON_OPS_SECRET": "k"}))


def test_unknown_keys_and_out_of_range_values_are_refused(tmp_path: Path) -> None:
    directory = with_policies(tmp_path, """
sweep_interval_seconds: 0
tiers:
  critical:
    steps: []
    escalate_faster: true
notifiers:
  mqtt: {kind: wecom, url: "https://qyapi.weixin.qq.com/x"}
""")
    found = problems(directory)
    assert any(p.startswith("policies.yaml:2: sweep_interval_seconds = 0:") for p in found)
    assert any("tiers.critical.steps" in p and "at least 1" in p for p in found)
    assert any("tiers.critical.escalate_faster" in p for p in found)
