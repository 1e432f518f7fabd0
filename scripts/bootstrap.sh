#!/usr/bin/env bash
# Make this checkout ready to test and demo: the mosquitto and PostgreSQL server binaries
# (used by daemon/localservices.py to run private servers; the system services are never
# started or stopped here) and .venv with the project installed in editable mode.
# Idempotent, and quick when everything is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.emon-install-stamp"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

# The same places daemon.localservices.find_postgres_bindir() looks.
is_server_bindir() { [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }
have_postgres() {
    local dir
    if [ -n "${EMON_PG_BINDIR:-}" ] && is_server_bindir "$EMON_PG_BINDIR"; then return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$dir" ] && is_server_bindir "$dir"; then return 0; fi
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if is_server_bindir "$dir"; then return 0; fi
    done
    if command -v initdb >/dev/null 2>&1 && is_server_bindir "$(dirname "$(command -v initdb)")"; then
        return 0
    fi
    return 1
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

install_system_packages() {
    local missing=()
    have_mosquitto || missing+=(mosquitto)
    have_postgres || missing+=(postgresql)
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && have_postgres; then
        # PostgreSQL refuses to run as root; localservices runs it as this user, which
        # Debian's postgresql-common creates.
        missing+=(postgresql-common)
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        log "mosquitto and PostgreSQL server: present"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "missing: ${missing[*]}"
        log "install them as root, e.g.: sudo apt-get install --no-install-recommends ${missing[*]}"
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing: ${missing[*]}, and there is no apt-get here to install them with"
        exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    apt-get update -q >&2
    if [[ " ${missing[*]} " == *" postgresql "* ]] && ! dpkg -s postgresql-common >/dev/null 2>&1; then
        # Skip the "main" cluster the package would create (and start) on port 5432: the
        # tests and the demo run their own servers.
        apt_install postgresql-common
        sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf
    fi
    apt_install "${missing[@]}"
    have_mosquitto || { log "mosquitto still missing after apt-get install"; exit 1; }
    have_postgres || { log "PostgreSQL server still missing after apt-get install"; exit 1; }
}

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

create_venv() {
    local python
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        return 0
    fi
    if ! python="$(find_python)"; then
        log "no python3.11 (or python3 >= 3.11) found"
        exit 1
    fi
    log "creating $VENV with $python"
    rm -rf "$VENV"
    if ! "$python" -m venv "$VENV" >&2; then
        # Debian's own Python ships venv/ensurepip separately.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            log "installing python3-venv with apt-get"
            apt-get update -q >&2
            apt_install python3-venv
            rm -rf "$VENV"
            "$python" -m venv "$VENV" >&2
        else
            log "'$python -m venv' failed; install the venv module (Debian: python3-venv)"
            exit 1
        fi
    fi
    rm -f "$STAMP"
}

install_project() {
    if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
        log "$VENV: up to date"
        return 0
    fi
    log "installing the project into $VENV (pip install -e '.[dev]')"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]' >&2
    touch "$STAMP"
}

install_system_packages
create_venv
install_project
log "ready"
