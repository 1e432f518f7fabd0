"""Private, real Mosquitto and PostgreSQL servers for tests and the demo.

Each service runs as its own process tree under a run directory, listening on a loopback
port (a free one unless given). Nothing here touches the system services: the Debian
``mosquitto`` and ``postgresql`` packages are only used for their binaries.

The API is synchronous on purpose: it is used from pytest fixtures and from ``emon demo``
before any event loop exists. Typical use::

    with MosquittoProcess(run_dir / "mqtt") as broker, PostgresProcess(run_dir / "pg") as pg:
        ...  # broker.host, broker.port, pg.dsn

Running as root (CI, containers):

* Mosquitto 2.x drops privileges to the ``mosquitto`` user when started as root; the
  generated configuration says ``user root`` so it keeps running as root and can write its
  log and persistence file in the (root-owned) run directory.
* PostgreSQL refuses to run as root. initdb and pg_ctl are run as the ``postgres`` system
  user (created by Debian's postgresql package) through ``runuser``, and the cluster's
  directory is chowned to that user. If that user cannot reach the run directory (pytest's
  ``/tmp/pytest-of-root`` is mode 0700, and every pytest session started as root resets it
  to 0700, so granting o+x would not last), the cluster lives in a stand-in directory
  ``/tmp/emon-postgres/<hash of the run directory>`` instead, with a ``postgres-home``
  symlink in the run directory; stand-ins whose run directory is gone are swept away.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psycopg
from psycopg import sql

_LOGGER = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"

STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
INITDB_TIMEOUT_SECONDS = 120.0
ADMIN_COMMAND_TIMEOUT_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 0.02
CONNECT_PROBE_TIMEOUT_SECONDS = 0.25
PG_CONNECT_TIMEOUT_SECONDS = 10
LOG_TAIL_LINES = 40
LOG_TAIL_MAX_BYTES = 64 * 1024
# Attempts to find a free port when the port was chosen by us and bind() lost a race.
PORT_ATTEMPTS = 3

MOSQUITTO_FALLBACK_BINARY = Path("/usr/sbin/mosquitto")
# Mosquitto's default (1000) silently drops QoS 1/2 messages queued for a lagging or
# offline persistent subscriber. The daemon must never lose a ping that way.
MOSQUITTO_MAX_QUEUED_MESSAGES = 1_000_000
MOSQUITTO_MAX_QUEUED_BYTES = 0  # 0 = no byte limit
# QoS 1/2 messages in flight per client at once (mosquitto's default is 20).
MOSQUITTO_MAX_INFLIGHT_MESSAGES = 100
# How often mosquitto writes its persistence file besides at a clean shutdown, so that a
# SIGKILLed broker loses at most this much of its queued state.
MOSQUITTO_AUTOSAVE_INTERVAL_SECONDS = 1

POSTGRES_SYSTEM_USER = "postgres"
POSTGRES_SUPERUSER = "emon"
POSTGRES_DATABASE = "emon"
POSTGRES_MAINTENANCE_DATABASE = "postgres"
POSTGRES_SHARED_BUFFERS_MB = 64
POSTGRES_MAX_CONNECTIONS = 200
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_LOCAL_CONF = "emon_local.conf"
# As root, where a cluster lives when user postgres cannot reach its run directory.
POSTGRES_RELOCATION_ROOT = Path(tempfile.gettempdir()) / "emon-postgres"
_RELOCATION_NAME_HEX_CHARS = 16
_STAND_IN_OWNER_FILE = "run_dir"
STAND_IN_LINK_NAME = "postgres-home"
TIMESCALEDB_LIBRARY = "timescaledb.so"
# Overrides where PostgreSQL's server binaries (initdb, pg_ctl, postgres) are taken from.
PG_BINDIR_ENV = "EMON_PG_BINDIR"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
UNIX_SOCKET_PATH_MAX_BYTES = 107
_PG_SOCKET_NAME_BYTES = len(".s.PGSQL.65535") + 1

_DATABASE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ADDRESS_IN_USE = "Address already in use"
_MOSQUITTO_RUNNING_RE = re.compile(r"mosquitto version \S+ running$", re.MULTILINE)


class LocalServiceError(RuntimeError):
    """A local service could not be found, started or stopped.

    ``log_tail`` holds the last lines of the service's logs (may be empty).
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- log tail ---\n{log_tail.rstrip()}\n--- end of log tail ---"
        super().__init__(message)


class _PortInUseError(LocalServiceError):
    """The service failed because its port was taken (retried when we chose the port)."""


# --------------------------------------------------------------------------- helpers


def find_free_port(host: str = LOOPBACK_HOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_PROBE_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_tail(path: Path, lines: int, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``since``."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(since, size - LOG_TAIL_MAX_BYTES)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may contain anything, spaces included.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting for its parent to reap it."""
    state = _proc_stat(pid)
    if state is None:
        return False
    return state[0] not in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _proc_stat(int(entry.name))
        if info is not None and info[1] == pid:
            children.append(int(entry.name))
    return children


def _wait_until(predicate: Callable[[], bool], timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)


def _clean_env() -> dict[str, str]:
    """The environment for server processes: ours without libpq's PG* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


_RUNNING: set[_LocalService] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Best effort: never leave a server behind when the owner forgot to stop it."""
    for service in list(_RUNNING):
        try:
            service.stop()
        except Exception:
            _LOGGER.exception("could not stop %s at exit", service)


class _LocalService:
    """Shared plumbing: run directory, port choice, log tails, context manager."""

    _kind = "service"

    def __init__(self, run_dir: Path, port: int | None) -> None:
        self._run_dir = Path(run_dir).absolute()
        self._port_is_ours = port is None
        self._port = find_free_port() if port is None else port
        self._started_once = False
        self._active = False  # started by this object and not stopped since

    def __repr__(self) -> str:
        return f"{type(self).__name__}(run_dir={str(self._run_dir)!r}, port={self._port})"

    @property
    def host(self) -> str:
        return LOOPBACK_HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def run_dir(self) -> Path:
        return self._run_dir

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        A no-op if this object started it and it still runs. A server left running on the
        same run directory by an owner that died is stopped first.
        """
        if self._active and self.running:
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_once()
            except _PortInUseError:
                if not self._port_is_ours or self._started_once or attempt == PORT_ATTEMPTS:
                    raise
                old, self._port = self._port, find_free_port()
                _LOGGER.warning(
                    "%s: port %s was taken meanwhile, retrying on port %s",
                    self._kind,
                    old,
                    self._port,
                )
            else:
                self._started_once = True
                self._active = True
                _RUNNING.add(self)
                return

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop cleanly, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of each of the service's log files."""
        parts = []
        for path in self._log_paths():
            tail = _read_tail(path, lines)
            if tail:
                parts.append(f"[{path}]\n{tail}")
        return "\n".join(parts)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_once(self) -> None:
        raise NotImplementedError

    def _log_paths(self) -> Sequence[Path]:
        raise NotImplementedError

    def _forget(self) -> None:
        self._active = False
        _RUNNING.discard(self)


# ------------------------------------------------------------------------- Mosquitto


def find_mosquitto() -> Path:
    """The mosquitto broker binary, or LocalServiceError saying how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    if MOSQUITTO_FALLBACK_BINARY.is_file() and os.access(MOSQUITTO_FALLBACK_BINARY, os.X_OK):
        return MOSQUITTO_FALLBACK_BINARY
    raise LocalServiceError(
        "mosquitto binary not found (looked in PATH and "
        f"{MOSQUITTO_FALLBACK_BINARY}); install it with `apt-get install mosquitto` "
        "or run scripts/bootstrap.sh"
    )


class MosquittoProcess(_LocalService):
    """A private Mosquitto broker: persistent sessions, deep queues, anonymous access."""

    _kind = "mosquitto"

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        *,
        max_inflight_messages: int = MOSQUITTO_MAX_INFLIGHT_MESSAGES,
    ) -> None:
        super().__init__(run_dir, port)
        self._max_inflight_messages = max_inflight_messages
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self._run_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self._run_dir / "mosquitto.log"

    @property
    def _stderr_path(self) -> Path:
        return self._run_dir / "mosquitto.stderr"

    @property
    def _pid_path(self) -> Path:
        return self._run_dir / "mosquitto.pid"

    @property
    def _persistence_dir(self) -> Path:
        return self._run_dir / "persistence"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM (the broker saves its persistence file) and wait; SIGKILL on timeout."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _LOGGER.warning(
                    "mosquitto (pid %s) ignored SIGTERM for %ss, killing it",
                    process.pid,
                    STOP_TIMEOUT_SECONDS,
                )
                process.kill()
                process.wait()
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL the broker: no goodbye, no final save of its persistence file."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._after_exit()

    def reload(self) -> None:
        """SIGHUP: the broker re-reads its password and ACL files (and other reloadable
        options) without dropping connections or sessions."""
        process = self._process
        if process is None or process.poll() is not None:
            raise LocalServiceError(f"{self._kind} is not running: cannot reload")
        process.send_signal(signal.SIGHUP)

    def _after_exit(self) -> None:
        self._process = None
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()
        self._forget()

    def _log_paths(self) -> Sequence[Path]:
        return (self.log_path, self._stderr_path)

    def _config_text(self) -> str:
        lines = [
            "# Written by daemon.localservices at every start; edits are lost.",
            "per_listener_settings false",
            f"listener {self._port} {LOOPBACK_HOST}",
            "allow_anonymous true",
            "persistence true",
            # mosquitto 1.x concatenates location and file name: keep the trailing slash.
            f"persistence_location {self._persistence_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {MOSQUITTO_AUTOSAVE_INTERVAL_SECONDS}",
            f"max_queued_messages {MOSQUITTO_MAX_QUEUED_MESSAGES}",
            f"max_queued_bytes {MOSQUITTO_MAX_QUEUED_BYTES}",
            f"max_inflight_messages {self._max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # mosquitto 2.x would otherwise switch to user "mosquitto", which cannot write
            # the root-owned run directory; "root" means: do not drop privileges.
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def _stop_stale(self) -> None:
        """Stop a broker left running on this run directory by an owner that died."""
        try:
            pid = int(self._pid_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if not _pid_alive(pid) or str(self.config_path).encode() not in cmdline:
            return
        _LOGGER.warning("stopping a leftover mosquitto (pid %s) of %s", pid, self._run_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT_SECONDS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT_SECONDS)

    def _start_once(self) -> None:
        binary = find_mosquitto()
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._persistence_dir.mkdir(exist_ok=True)
        self._stop_stale()
        self.config_path.write_text(self._config_text(), encoding="utf-8")
        log_offsets = {path: _file_size(path) for path in self._log_paths()}
        stderr: IO[bytes]
        with self._stderr_path.open("ab") as stderr:
            # A session of its own: a Ctrl-C in the owner's terminal must not take the
            # broker down before the owner has shut down cleanly.
            process = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=self._run_dir,
                start_new_session=True,
            )
        self._process = process
        self._pid_path.write_text(f"{process.pid}\n", encoding="ascii")
        _LOGGER.debug("mosquitto started (pid %s) on port %s", process.pid, self._port)

        def new_log() -> str:
            return "\n".join(
                _read_tail(path, LOG_TAIL_LINES, since=offset)
                for path, offset in log_offsets.items()
            )

        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                self._after_exit()
                tail = new_log()
                error_type = _PortInUseError if _ADDRESS_IN_USE in tail else LocalServiceError
                raise error_type(
                    f"mosquitto exited with status {process.returncode} while starting "
                    f"on port {self._port} (config {self.config_path})",
                    tail,
                )
            # The port answering is not enough: another process may hold it (we would be
            # talking to it while our broker dies on "Address already in use"). mosquitto
            # logs "... running" once all its listeners are open.
            if _MOSQUITTO_RUNNING_RE.search(
                _read_tail(self.log_path, LOG_TAIL_LINES, since=log_offsets[self.log_path])
            ) and _port_accepts(LOOPBACK_HOST, self._port):
                if process.poll() is None:
                    _LOGGER.info("mosquitto ready on %s:%s", LOOPBACK_HOST, self._port)
                    return
                continue  # died meanwhile: reported above
            if time.monotonic() >= deadline:
                self.kill()
                raise LocalServiceError(
                    f"mosquitto did not accept connections on port {self._port} "
                    f"within {STARTUP_TIMEOUT_SECONDS}s",
                    new_log(),
                )
            time.sleep(POLL_INTERVAL_SECONDS)


class ConfiguredMosquittoProcess(MosquittoProcess):
    """A private Mosquitto started from a given configuration file (the production one,
    config/mosquitto/mosquitto.conf), with only its host-specific lines substituted:

    * the listeners, in order: the first (plain) on ``port``, the second (TLS) on
      ``tls_port``, both bound to loopback;
    * the paths of the password file, ACL file, TLS certificate and key;
    * persistence location, log file (this run directory), no pid file, and ``user root``
      when run as root.

    Everything else (authentication, ACL use, queue limits, TLS version, retain and packet
    limits) stays exactly as written, so tests exercise the shipped security settings.
    """

    _kind = "mosquitto (configured)"

    def __init__(
        self,
        run_dir: Path,
        template: Path,
        *,
        password_file: Path,
        acl_file: Path,
        certfile: Path,
        keyfile: Path,
        port: int | None = None,
        tls_port: int | None = None,
    ) -> None:
        super().__init__(run_dir, port)
        self._template = Path(template)
        self._paths = {
            "password_file": Path(password_file).absolute(),
            "acl_file": Path(acl_file).absolute(),
            "certfile": Path(certfile).absolute(),
            "keyfile": Path(keyfile).absolute(),
        }
        self._tls_port = find_free_port() if tls_port is None else tls_port

    @property
    def tls_port(self) -> int:
        return self._tls_port

    def _config_text(self) -> str:
        return render_mosquitto_config(
            self._template.read_text(encoding="utf-8"),
            listener_ports=(self._port, self._tls_port),
            paths=self._paths,
            persistence_dir=self._persistence_dir,
            log_path=self.log_path,
        )


_LISTENER_DIRECTIVE = "listener"
# Directives that name host-specific files, replaced or dropped for a private instance.
_DROPPED_DIRECTIVES = frozenset({"pid_file", "log_dest", "persistence_location", "user"})


def render_mosquitto_config(
    template: str,
    *,
    listener_ports: Sequence[int],
    paths: dict[str, Path],
    persistence_dir: Path,
    log_path: Path,
) -> str:
    """The template with its listeners moved to loopback ports and its paths replaced.

    Raises LocalServiceError if the template has more listeners than ports given or lacks
    a path directive that is to be replaced (a template that drifted from what the
    caller expects must not silently start a weaker broker).
    """
    lines = ["# Written by daemon.localservices from a template at every start."]
    listeners = 0
    replaced: set[str] = set()
    for raw in template.splitlines():
        words = raw.split()
        directive = words[0] if words and not words[0].startswith("#") else ""
        if directive == _LISTENER_DIRECTIVE:
            if listeners >= len(listener_ports):
                raise LocalServiceError(f"template has more than {len(listener_ports)} listeners")
            lines.append(f"listener {listener_ports[listeners]} {LOOPBACK_HOST}")
            listeners += 1
        elif directive in paths:
            lines.append(f"{directive} {paths[directive]}")
            replaced.add(directive)
        elif directive not in _DROPPED_DIRECTIVES:
            lines.append(raw)
    missing = sorted(set(paths) - replaced)
    if missing or listeners != len(listener_ports):
        raise LocalServiceError(
            f"template lacks {', '.join(missing) or 'listeners'}: "
            f"{listeners} listener(s) for {len(listener_ports)} port(s)"
        )
    lines += [
        # mosquitto 1.x concatenates location and file name: keep the trailing slash.
        f"persistence_location {persistence_dir}/",
        f"log_dest file {log_path}",
    ]
    if os.geteuid() == 0:
        # See MosquittoProcess: keep root so the root-owned run directory stays writable.
        lines.append("user root")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ PostgreSQL


def _is_server_bindir(path: Path) -> bool:
    return all((path / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres_bindir() -> Path:
    """Directory holding initdb, pg_ctl and postgres.

    Order: $EMON_PG_BINDIR, ``pg_config --bindir`` (Debian's pg_config may belong to
    libpq-dev alone, so the directory must really hold the server), the highest
    /usr/lib/postgresql/*/bin, then initdb's directory in PATH.
    """
    override = os.environ.get(PG_BINDIR_ENV)
    if override:
        if _is_server_bindir(Path(override)):
            return Path(override)
        raise LocalServiceError(f"${PG_BINDIR_ENV}={override} holds no initdb/pg_ctl/postgres")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=ADMIN_COMMAND_TIMEOUT_SECONDS,
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(sorted(Path("/").glob(POSTGRES_GLOB.lstrip("/")), key=_version_key)[::-1])
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if _is_server_bindir(candidate):
            return candidate
    raise LocalServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via "
        f"${PG_BINDIR_ENV}, pg_config --bindir, {POSTGRES_GLOB} or PATH; install them with "
        "`apt-get install postgresql` or run scripts/bootstrap.sh"
    )


def _pkglibdir(bindir: Path) -> Path:
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), "--pkglibdir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=ADMIN_COMMAND_TIMEOUT_SECONDS,
            ).stdout.strip()
            if out:
                return Path(out)
    return bindir.parent / "lib"


def timescaledb_available(bindir: Path | None = None) -> bool:
    """Whether the TimescaleDB library is installed for this PostgreSQL."""
    bindir = find_postgres_bindir() if bindir is None else bindir
    return (_pkglibdir(bindir) / TIMESCALEDB_LIBRARY).is_file()


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every existing ancestor directory of ``path``."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for ancestor in path.parents:
        try:
            st = ancestor.stat()
        except FileNotFoundError:
            continue  # we will create it, with the usual 0755
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _stand_in_owner(home: Path) -> Path | None:
    """The run directory that a stand-in home was made for, if recorded."""
    try:
        text = home.joinpath(_STAND_IN_OWNER_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    return Path(text.rstrip("\n")) if text.strip() else None


def _stand_in_belongs_to(home: Path, run_dir: Path) -> bool:
    """Whether ``home`` serves this run directory, not a deleted one of the same name.

    The run directory's ``postgres-home`` symlink is the tie: a run directory deleted and
    made again (same path, maybe even the same inode number) does not have it.
    """
    link = run_dir / STAND_IN_LINK_NAME
    try:
        return link.is_symlink() and Path(os.readlink(link)) == home
    except OSError:
        return False


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _pid_alive(pid)


def _sweep_stand_ins(keep: Path) -> None:
    """Delete stand-in homes whose run directory is gone and whose server is not running."""
    for home in POSTGRES_RELOCATION_ROOT.iterdir():
        owner = _stand_in_owner(home)
        if home == keep or owner is None:  # not ours, or being set up right now
            continue
        if _stand_in_belongs_to(home, owner) or _postmaster_alive(home / "data"):
            continue
        _LOGGER.info("removing %s, left behind for the deleted %s", home, owner)
        shutil.rmtree(home, ignore_errors=True)


def _discard_tree(path: Path) -> None:
    """Remove a stale stand-in that another process's sweep may be removing right now.

    Parallel test runs (one per checkout) sweep each other's orphaned stand-ins: a plain
    rmtree here then failed with FileNotFoundError halfway. Renaming first is atomic (one
    of the two wins, the other sees it gone), and the new stand-in made at the old path
    is never touched by a removal that started on the old one.
    """
    trash = path.with_name(f".discarded-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return  # someone else took it
    shutil.rmtree(trash, ignore_errors=True)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresProcess(_LocalService):
    """A private PostgreSQL cluster: trust auth on loopback, superuser and database ``emon``."""

    _kind = "postgres"

    def __init__(self, run_dir: Path, port: int | None = None) -> None:
        super().__init__(run_dir, port)
        self._bindir: Path | None = None
        self._timescaledb = False
        self._home: Path | None = None

    # -- paths and properties

    @property
    def home(self) -> Path:
        """Directory of data/, sock/ and postgres.log: normally the run directory.

        As root, when the postgres user cannot reach the run directory (pytest's
        /tmp/pytest-of-root is mode 0700), a stand-in under /tmp/emon-postgres/, named
        after the run directory, which gets a symlink ``postgres-home`` to it.
        """
        if self._home is None:
            self._home = self._choose_home()
        return self._home

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def dsn(self) -> str:
        """DSN of the ``emon`` database as the ``emon`` superuser."""
        return self.dsn_for(POSTGRES_DATABASE)

    @property
    def timescaledb(self) -> bool:
        """Whether the server was started with timescaledb in shared_preload_libraries."""
        return self._timescaledb

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{POSTGRES_SUPERUSER}@{LOOPBACK_HOST}:{self._port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs on this data directory."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8")
            pid = int(first_line.split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        # Guard against a recycled pid: the postmaster's cwd is its data directory.
        with contextlib.suppress(OSError):
            if Path(os.readlink(f"/proc/{pid}/cwd")) != self.data_dir.resolve():
                return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle

    def stop(self) -> None:
        """Fast shutdown (disconnects clients, checkpoints) and wait for it.

        Done as pg_ctl does it, with SIGINT to the postmaster, but without pg_ctl: that
        needs the postgres user to reach the data directory by its absolute path, and a
        concurrent pytest session resets /tmp/pytest-of-root to mode 0700 at its start.
        """
        pid = self.pid
        if pid is None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT_SECONDS):
            _LOGGER.warning(
                "postgres (pid %s) did not shut down within %ss; killing it",
                pid,
                STOP_TIMEOUT_SECONDS,
            )
            self.kill()
            return
        _LOGGER.info("postgres on port %s stopped", self._port)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as in a crash; recovery runs at start.

        The postmaster is stopped (SIGSTOP) first so that it cannot fork while its children
        are collected; backends are their own process groups, so killpg would miss them.
        """
        pid = self.pid
        if pid is None:
            self._forget()
            return
        victims = [pid]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            victims.extend(_children_of(pid))
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if not _wait_until(lambda: not any(_pid_alive(v) for v in victims), STOP_TIMEOUT_SECONDS):
            raise LocalServiceError(f"postgres processes {victims} survived SIGKILL")
        # Everything is dead, but the lock files name the old postmaster's pid. If nobody
        # reaps the zombie (a container's pid 1 may not), postgres would take it for a live
        # postmaster and refuse to start; no process of the old server is left, so drop them.
        for lock in (
            self.data_dir / "postmaster.pid",
            *self.socket_dir.glob(".s.PGSQL.*.lock"),
        ):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        _LOGGER.info("postgres on port %s killed (pids %s)", self._port, victims)
        self._forget()

    def _start_once(self) -> None:
        bindir = find_postgres_bindir()
        self._bindir = bindir
        self._prepare_run_dir()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bindir)
        self._stop_stale()
        self._write_local_conf(bindir)
        log_offset = _file_size(self.log_path)
        result = self._run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(STARTUP_TIMEOUT_SECONDS)),
                "-s",
            ],
            timeout=STARTUP_TIMEOUT_SECONDS + 5,
        )
        if result.returncode != 0:
            tail = _read_tail(self.log_path, LOG_TAIL_LINES, since=log_offset)
            tail = "\n".join(filter(None, [result.stdout.strip(), result.stderr.strip(), tail]))
            if self.running:
                self.kill()
            error_type = _PortInUseError if _ADDRESS_IN_USE in tail else LocalServiceError
            raise error_type(
                f"postgres did not start on port {self._port} (data {self.data_dir})", tail
            )
        if not _wait_until(
            lambda: _port_accepts(LOOPBACK_HOST, self._port), STARTUP_TIMEOUT_SECONDS
        ):
            self.kill()
            raise LocalServiceError(
                f"postgres started but does not accept connections on port {self._port}",
                _read_tail(self.log_path, LOG_TAIL_LINES, since=log_offset),
            )
        self._ensure_database(POSTGRES_DATABASE)
        _LOGGER.info(
            "postgres ready on %s:%s (timescaledb preloaded: %s)",
            LOOPBACK_HOST,
            self._port,
            self._timescaledb,
        )

    def _stop_stale(self) -> None:
        if self.running:
            _LOGGER.warning("stopping a leftover postgres (pid %s) on %s", self.pid, self.data_dir)
            self.stop()

    # -- databases

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lower-case letters, digits, _) and return its DSN."""
        self._check_name(name)
        try:
            with psycopg.connect(
                self.dsn_for(POSTGRES_MAINTENANCE_DATABASE),
                autocommit=True,
                connect_timeout=PG_CONNECT_TIMEOUT_SECONDS,
            ) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise LocalServiceError(
                f"could not create database {name!r} on port {self._port}: {exc}"
            ) from exc
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its clients."""
        self._check_name(name)
        try:
            with psycopg.connect(
                self.dsn_for(POSTGRES_MAINTENANCE_DATABASE),
                autocommit=True,
                connect_timeout=PG_CONNECT_TIMEOUT_SECONDS,
            ) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error as exc:
            raise LocalServiceError(
                f"could not drop database {name!r} on port {self._port}: {exc}"
            ) from exc

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DATABASE_NAME_RE.match(name):
            raise ValueError(
                f"database name {name!r} must match {_DATABASE_NAME_RE.pattern} "
                "(it is used in DSNs unquoted)"
            )

    def _ensure_database(self, name: str) -> None:
        try:
            with psycopg.connect(
                self.dsn_for(POSTGRES_MAINTENANCE_DATABASE),
                autocommit=True,
                connect_timeout=PG_CONNECT_TIMEOUT_SECONDS,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise LocalServiceError(
                f"postgres on port {self._port} is up but creating database {name!r} failed: {exc}",
                self.log_tail(),
            ) from exc

    # -- setup

    def _log_paths(self) -> Sequence[Path]:
        return (self.log_path,)

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _system_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            raise LocalServiceError(
                "PostgreSQL refuses to run as root and there is no "
                f"{POSTGRES_SYSTEM_USER!r} user to run it as; install Debian's postgresql "
                "package (it creates the user) or run as a non-root user"
            ) from None

    def _command(self, argv: list[str]) -> list[str]:
        if not self._as_root():
            return argv
        runuser = shutil.which("runuser") or next(
            (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if Path(p).is_file()), None
        )
        if runuser is None:
            raise LocalServiceError("running as root needs runuser (package util-linux)")
        return [runuser, "-u", POSTGRES_SYSTEM_USER, "--", *argv]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = self._command(argv)
        _LOGGER.debug("running %s", command)
        try:
            return subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self._run_dir,  # the postgres user must be able to getcwd()
                env=_clean_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalServiceError(
                f"{argv[0]} {argv[1] if len(argv) > 1 else ''} timed out after {timeout}s",
                self.log_tail(),
            ) from exc

    def _choose_home(self) -> Path:
        if not self._as_root():
            return self._run_dir
        try:
            user = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            return self._run_dir  # start() explains
        digest = hashlib.sha256(str(self._run_dir).encode()).hexdigest()
        stand_in = POSTGRES_RELOCATION_ROOT / digest[:_RELOCATION_NAME_HEX_CHARS]
        if _stand_in_belongs_to(stand_in, self._run_dir):
            return stand_in  # keep using the cluster made earlier for this run directory
        return self._run_dir if _reachable_by(self._run_dir, user) else stand_in

    def _prepare_run_dir(self) -> None:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        home = self.home
        if home != self._run_dir and not _stand_in_belongs_to(home, self._run_dir):
            _LOGGER.info(
                "user %s cannot reach %s; the cluster lives in %s",
                POSTGRES_SYSTEM_USER,
                self._run_dir,
                home,
            )
            POSTGRES_RELOCATION_ROOT.mkdir(mode=0o755, exist_ok=True)
            _sweep_stand_ins(keep=home)
            if home.exists():  # made for a deleted run directory of the same name
                if self.running:
                    self.kill()
                _discard_tree(home)
            home.mkdir()
            link = self._run_dir / STAND_IN_LINK_NAME
            link.unlink(missing_ok=True)
            link.symlink_to(home, target_is_directory=True)
            # The owner file last: until it exists, other processes' sweeps leave the
            # stand-in alone ("being set up"); with it, the link above already ties it.
            (home / _STAND_IN_OWNER_FILE).write_text(f"{self._run_dir}\n", encoding="utf-8")
        self.socket_dir.mkdir(exist_ok=True)
        if not self._as_root():
            return
        user = self._system_user()
        for path in (home, self.socket_dir, self.log_path):
            if path.exists():
                os.chown(path, user.pw_uid, user.pw_gid)

    def _initdb(self, bindir: Path) -> None:
        _LOGGER.info("initdb %s", self.data_dir)
        result = self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                POSTGRES_SUPERUSER,
                "--auth-local=trust",
                "--auth-host=trust",
                "-E",
                "UTF8",
                "--no-locale",
                # The data files reach the disk through the page cache anyway; a crash of
                # the machine during a test run is not a case we need to survive.
                "--no-sync",
            ],
            timeout=INITDB_TIMEOUT_SECONDS,
        )
        if result.returncode != 0:
            raise LocalServiceError(
                f"initdb of {self.data_dir} failed with status {result.returncode}",
                "\n".join([*result.stdout.splitlines()[-LOG_TAIL_LINES:], result.stderr]),
            )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write(f"\n# Port, paths and test settings\ninclude = '{POSTGRES_LOCAL_CONF}'\n")

    def _write_local_conf(self, bindir: Path) -> None:
        socket_dir = str(self.socket_dir)
        if len(socket_dir.encode()) + _PG_SOCKET_NAME_BYTES > UNIX_SOCKET_PATH_MAX_BYTES:
            _LOGGER.warning(
                "run directory path too long for a unix socket; postgres listens on TCP only"
            )
            socket_dir = ""
        self._timescaledb = timescaledb_available(bindir)
        settings = {
            "listen_addresses": _conf_quote(LOOPBACK_HOST),
            "port": str(self._port),
            "unix_socket_directories": _conf_quote(socket_dir),
            "max_connections": str(POSTGRES_MAX_CONNECTIONS),
            "shared_buffers": _conf_quote(f"{POSTGRES_SHARED_BUFFERS_MB}MB"),
            # Durability stays real: fault tests SIGKILL the server and must see every
            # acknowledged commit afterwards. synchronous_commit=off would break that: it
            # acknowledges before the WAL is even written to the kernel, and a SIGKILL then
            # loses those commits (measured: ~20% of commits made in the last 50 ms).
            # With fsync on, a commit costs about 0.5 ms here.
            "fsync": "on",
            "full_page_writes": "on",
            "synchronous_commit": "on",
            "jit": "off",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if self._timescaledb:
            settings["shared_preload_libraries"] = "'timescaledb'"
            settings["timescaledb.telemetry_level"] = "off"
        text = "# Written by daemon.localservices at every start; edits are lost.\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        path = self.data_dir / POSTGRES_LOCAL_CONF
        path.write_text(text, encoding="utf-8")
        if self._as_root():
            user = self._system_user()
            os.chown(path, user.pw_uid, user.pw_gid)
