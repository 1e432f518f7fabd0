"""Helpers for tests against a Mosquitto started from config/mosquitto/mosquitto.conf:
a throw-away PKI made with the openssl command, broker files made with `emon broker`,
and clients that log in with an account's credentials."""

from __future__ import annotations

import contextlib
import io
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import yaml

from daemon.cli import main as emon_main
from daemon.localservices import LOOPBACK_HOST, ConfiguredMosquittoProcess

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
BROKER_TEMPLATE = CONFIG_DIR / "mosquitto" / "mosquitto.conf"
OPENSSL_TIMEOUT_SECONDS = 60.0
CERT_DAYS = 2


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path  # a CA that did not sign the server certificate


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary is not None, "openssl not installed (Debian package openssl)"
    subprocess.run(
        [binary, *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_SECONDS
    )


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(CERT_DAYS), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_pki(directory: Path) -> Pki:
    """The same steps as config/mosquitto/README.md: a CA, a server key and a certificate
    for 127.0.0.1 and localhost signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca(directory, "emon-test-ca")
    _, other_ca_cert = _make_ca(directory, "unrelated-ca")
    server_key, csr, server_cert = (
        directory / name for name in ("server.key", "server.csr", "server.crt")
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(server_key), "-out", str(csr), "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n"
        "basicConstraints=critical,CA:FALSE\n",
        encoding="utf-8",
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(server_cert), "-days", str(CERT_DAYS),
        "-extfile", str(extensions),
        cwd=directory,
    )  # fmt: skip
    return Pki(ca_cert, server_cert, server_key, other_ca_cert)


def write_roster(
    config_dir: Path,
    *,
    add_devices: dict[str, str | list[tuple[str, str]]] | None = None,
    drop_subjects: tuple[str, ...] = (),
) -> Path:
    """A copy of config/ with subjects dropped and subjects added: subject id -> a device
    id (a phone if it has a dot: OwnTracks' <user>.<device>, else a wearable), or a list
    of (device id, kind)."""
    shutil.copytree(CONFIG_DIR, config_dir, ignore=shutil.ignore_patterns("mosquitto"))
    subjects_file = config_dir / "subjects.yaml"
    roster = yaml.safe_load(subjects_file.read_text(encoding="utf-8"))
    roster["subjects"] = [s for s in roster["subjects"] if s["id"] not in drop_subjects]
    for subject_id, devices in (add_devices or {}).items():
        if isinstance(devices, str):
            devices = [(devices, "phone" if "." in devices else "wearable")]
        roster["subjects"].append(
            {
                "id": subject_id,
                "officer": "off-li",
                "devices": [{"id": device_id, "kind": kind} for device_id, kind in devices],
                "permitted_zone": "district-futian",
            }
        )
    subjects_file.write_text(yaml.safe_dump(roster, sort_keys=False), encoding="utf-8")
    return config_dir


def run_emon(*argv: str) -> tuple[int, str, str]:
    """`emon ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = emon_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def read_credentials(path: Path) -> dict[str, str]:
    credentials: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            account, password = line.split(" ", 1)
            credentials[account] = password
    return credentials


@dataclass
class BrokerFiles:
    password_file: Path
    acl_file: Path
    credentials: dict[str, str]


def make_broker_files(config_dir: Path, out_dir: Path) -> BrokerFiles:
    """Password and ACL files from the roster in `config_dir`, through the real CLI."""
    password_file, acl_file = out_dir / "passwd", out_dir / "acl"
    credentials_file = out_dir / "credentials.txt"
    code, _, err = run_emon("broker", "acl", "--config", str(config_dir), "--out", str(acl_file))
    assert code == 0, err
    code, _, err = run_emon(
        "broker", "passwords", "--config", str(config_dir), "--out", str(password_file),
        "--credentials", str(credentials_file),
    )  # fmt: skip
    assert code == 0, err
    credentials = read_credentials(credentials_file)
    credentials_file.unlink()
    return BrokerFiles(password_file, acl_file, credentials)


def configured_broker(run_dir: Path, files: BrokerFiles, pki: Pki) -> ConfiguredMosquittoProcess:
    return ConfiguredMosquittoProcess(
        run_dir,
        BROKER_TEMPLATE,
        password_file=files.password_file,
        acl_file=files.acl_file,
        certfile=pki.server_cert,
        keyfile=pki.server_key,
    )


def tls_context(ca_cert: Path | None) -> ssl.SSLContext:
    """What a device or console uses: verify the broker by `ca_cert` (None: system CAs)."""
    return ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)


def client(
    broker: ConfiguredMosquittoProcess,
    account: str | None,
    password: str | None,
    *,
    ca_cert: Path | None,
    tls: bool = True,
    identifier: str | None = None,
    clean_session: bool = True,
    timeout: float = 10.0,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        LOOPBACK_HOST,
        broker.tls_port if tls else broker.port,
        username=account,
        password=password,
        identifier=identifier if identifier is not None else account,
        tls_context=tls_context(ca_cert) if tls else None,
        clean_session=clean_session,
        timeout=timeout,
    )
