"""`emon broker acl|passwords`: accounts, ACL text and Mosquitto password hashes from the
roster (no broker here; tests/test_broker_security.py runs a real one on these files)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon.broker import (
    PBKDF2_ITERATIONS,
    AccountRole,
    BrokerFilesError,
    build_accounts,
    hash_password,
    parse_password_file,
    plan_passwords,
    verify_password,
    write_private,
)
from daemon.configfiles import load_config
from tests.broker_helpers import CONFIG_DIR, read_credentials, run_emon, write_roster

ROSTER_DEVICES = ("tag-s001", "tag-s002", "tag-s003")


def test_accounts_follow_the_roster() -> None:
    accounts = build_accounts(load_config(CONFIG_DIR, env={}))
    by_name = {a.name: a for a in accounts}
    assert [a.name for a in accounts] == [
        "emon-daemon", "alerts-reader", "operator",
        "cmd-futian", "off-chen", "off-li", "sup-wang", *ROSTER_DEVICES,
        "p-0001",  # issue 5: the example's protected person's phone
    ]  # fmt: skip
    assert {(g.access, g.topic) for g in by_name["p-0001"].grants} == {
        ("write", "emon/v1/protected/p-0001/location"),
    }
    device = by_name["tag-s002"]
    assert device.role is AccountRole.DEVICE
    assert {(g.access, g.topic) for g in device.grants} == {
        ("write", "emon/v1/devices/tag-s002/location"),
        ("write", "emon/v1/devices/tag-s002/event"),
    }
    assert {(g.access, g.topic) for g in by_name["emon-daemon"].grants} == {
        ("read", "emon/v1/devices/+/location"),
        ("read", "emon/v1/devices/+/event"),
        ("read", "owntracks/+/+"),
        ("read", "emon/v1/protected/+/location"),
        ("read", "emon/v1/commands/+"),
        ("write", "emon/v1/alerts/#"),
        ("write", "emon/v1/deadletter/#"),
        ("write", "emon/v1/commands/+/reply"),
        ("write", "emon/v1/officers/+/notifications"),
        ("write", "emon/v1/operators/config"),
    }
    assert {(g.access, g.topic) for g in by_name["alerts-reader"].grants} == {
        ("read", "emon/v1/alerts/#")
    }
    # Officers: their own channel, and the alerts of the subjects in their care.
    assert {(g.access, g.topic) for g in by_name["off-li"].grants} == {
        ("write", "emon/v1/commands/off-li"),
        ("read", "emon/v1/commands/off-li/reply"),
        ("read", "emon/v1/officers/off-li/notifications"),
        ("read", "emon/v1/alerts/s001"),
        ("read", "emon/v1/alerts/s002"),
    }
    alert_reads = {
        name: {g.topic for g in by_name[name].grants if g.topic.startswith("emon/v1/alerts/")}
        for name in ("off-chen", "sup-wang", "cmd-futian")
    }
    assert alert_reads == {
        "off-chen": {"emon/v1/alerts/s003"},
        "sup-wang": {f"emon/v1/alerts/{s}" for s in ("s001", "s002", "s003")},  # the team
        "cmd-futian": {"emon/v1/alerts/#"},  # the command role
    }
    # Nobody but the daemon reads device topics; no device reads anything.
    readers_of_devices = {
        a.name for a in accounts for g in a.grants
        if g.access == "read" and g.topic.startswith(("emon/v1/devices/", "owntracks/"))
    }  # fmt: skip
    assert readers_of_devices == {"emon-daemon"}


def test_owntracks_phones_get_one_account_per_user(tmp_path: Path) -> None:
    config = write_roster(
        tmp_path / "config",
        add_devices={
            "s900": [("u900.phone", "phone"), ("u900.tablet", "phone")],  # one user
            "s901": "u901.phone",
            "s902": [("tag.s902", "wearable")],  # a dot, but a wire v1 device
        },
    )
    accounts = {a.name: a for a in build_accounts(load_config(config, env={}))}
    assert {n for n, a in accounts.items() if a.role is AccountRole.OWNTRACKS_USER} == {
        "u900", "u901"
    }
    assert [(g.access, g.topic) for g in accounts["u900"].grants] == [
        ("write", "owntracks/u900/+")
    ]
    assert accounts["tag.s902"].role is AccountRole.DEVICE


def test_daemon_account_is_the_configured_user_name(tmp_path: Path) -> None:
    config = write_roster(tmp_path / "config")
    settings = config / "settings.yaml"
    settings.write_text(
        settings.read_text(encoding="utf-8").replace(
            "  client_id: emon-daemon\n", "  client_id: emon-daemon\n  username: emon-prod-1\n"
        ),
        encoding="utf-8",
    )
    accounts = build_accounts(load_config(config, env={}))
    assert accounts[0].name == "emon-prod-1"
    assert accounts[0].role is AccountRole.DAEMON


def test_device_ids_that_cannot_be_accounts_are_refused(tmp_path: Path) -> None:
    # ':' is a valid device id character (imei:...) but splits a password-file line; a
    # device named like a service account would inherit or lose its rights.
    config = write_roster(
        tmp_path / "config", add_devices={"s900": "imei:35000", "s901": "alerts-reader"}
    )
    with pytest.raises(BrokerFilesError) as info:
        build_accounts(load_config(config, env={}))
    message = str(info.value)
    assert "'imei:35000': not usable as a broker account name" in message
    assert "device 'alerts-reader': name already used by a alerts-reader account" in message


def test_hash_is_mosquitto_pbkdf2_format_and_verifies() -> None:
    salt = bytes(range(12))
    entry = hash_password("correct horse", salt=salt)
    parts = entry.split("$")
    assert parts[:3] == ["", "7", str(PBKDF2_ITERATIONS)]
    assert parts[3] == "AAECAwQFBgcICQoL"  # base64 of the 12 salt bytes
    assert len(parts[4]) == 88  # base64 of a 64-byte key
    assert verify_password("correct horse", entry)
    assert not verify_password("correct horse!", entry)
    assert not verify_password("x", "$6$abc$def")  # an older, unsupported scheme


def test_hash_of_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    """The format is Mosquitto's own: an entry written by mosquitto_passwd checks out here
    (and the broker accepting ours is tested in test_broker_security)."""
    tool = shutil.which("mosquitto_passwd")
    assert tool is not None, "mosquitto_passwd comes with Debian's mosquitto package"
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), "dev-1", "s3cret"], check=True, timeout=30)
    entries = parse_password_file(path.read_text(encoding="utf-8"), "pw")
    assert verify_password("s3cret", entries["dev-1"])
    assert not verify_password("s3cret2", entries["dev-1"])


def test_password_file_refuses_plain_text_entries() -> None:
    with pytest.raises(BrokerFilesError, match=r"pw:2: not a hashed"):
        parse_password_file("# header\nalice:plaintext\n", "pw")


def test_plan_keeps_creates_revokes_and_rotates() -> None:
    accounts = build_accounts(load_config(CONFIG_DIR, env={}))
    first = plan_passwords(accounts, {})
    assert set(first.new_passwords) == {a.name for a in accounts}
    assert first.kept == ()
    assert first.revoked == ()
    for name, password in first.new_passwords.items():
        assert len(password) == 32
        assert verify_password(password, first.entries[name])
    existing = {**first.entries, "tag-gone": first.entries["tag-s001"]}
    second = plan_passwords(accounts, existing, rotate=["tag-s002"])
    assert set(second.new_passwords) == {"tag-s002"}
    assert second.revoked == ("tag-gone",)
    assert second.entries["tag-s001"] == first.entries["tag-s001"]  # device keeps working
    assert second.entries["tag-s002"] != first.entries["tag-s002"]
    with pytest.raises(BrokerFilesError, match="unknown account"):
        plan_passwords(accounts, existing, rotate=["nobody"])


def test_cli_regenerates_after_a_roster_change(tmp_path: Path) -> None:
    config = write_roster(tmp_path / "config")
    passwd, creds = tmp_path / "out" / "passwd", tmp_path / "out" / "new.txt"
    args = ["broker", "passwords", "--config", str(config), "--out", str(passwd)]

    code, _, err = run_emon(*args)
    assert code == 1
    assert "give --credentials FILE" in err
    assert not passwd.exists()

    code, out, _ = run_emon(*args, "--credentials", str(creds))
    assert code == 0
    assert "11 accounts: 0 kept, 11 new or rotated" in out
    for path in (passwd, creds):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = parse_password_file(passwd.read_text(encoding="utf-8"), "passwd")
    plain = read_credentials(creds)
    assert all(verify_password(plain[name], first[name]) for name in first)

    # An unprovisioned credentials file is never overwritten.
    code, _, err = run_emon(*args, "--credentials", str(creds), "--rotate", "tag-s001")
    assert code == 1
    assert "exists" in err
    creds.unlink()

    # The roster changes: s001 leaves, s900 arrives.
    shutil.rmtree(config)
    write_roster(config, add_devices={"s900": "tag-s900"}, drop_subjects=("s001",))
    code, out, _ = run_emon(*args, "--credentials", str(creds))
    assert code == 0
    assert "11 accounts: 10 kept, 1 new or rotated" in out
    assert "1 revoked" in out
    second = parse_password_file(passwd.read_text(encoding="utf-8"), "passwd")
    assert "tag-s001" not in second
    assert second["tag-s002"] == first["tag-s002"]
    assert set(read_credentials(creds)) == {"tag-s900"}

    acl = tmp_path / "out" / "acl"
    code, out, _ = run_emon("broker", "acl", "--config", str(config), "--out", str(acl),
                            "--alerts-reader", "console-1", "--alerts-reader", "console-2")
    assert code == 0
    text = acl.read_text(encoding="utf-8")
    # Devices by pattern (who is a device: the password file); one block per service.
    assert "\npattern write emon/v1/devices/%u/location\n" in text
    assert "\npattern write emon/v1/devices/%u/event\n" in text
    assert "tag-s" not in text
    assert "# Devices (3 accounts in the password file)" in text
    assert "user console-1\ntopic read emon/v1/alerts/#\n" in text
    assert "user console-2\n" in text
    assert "user alerts-reader" not in text


def test_cli_reports_an_invalid_roster(tmp_path: Path) -> None:
    config = write_roster(tmp_path / "config", add_devices={"s900": "tag-s001"})  # taken
    code, _, err = run_emon("broker", "acl", "--config", str(config), "--out",
                            str(tmp_path / "acl"))
    assert code == 2
    assert "device already assigned to s001" in err
    assert not (tmp_path / "acl").exists()


def test_write_private_exclusive_refuses_existing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_private(path, "one\n", exclusive=True)
    with pytest.raises(BrokerFilesError, match="exists"):
        write_private(path, "two\n", exclusive=True)
    write_private(path, "three\n")
    assert path.read_text(encoding="utf-8") == "three\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp files left behind
