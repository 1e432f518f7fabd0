#!/usr/bin/env bash
# Make this checkout ready to test and demo: the mosquitto and PostgreSQL server binaries
# (used by daemon/localservices.py to run private servers; the system services are never
# started or stopped here), .venv with the project installed in editable mode, and the
# officer console's page (Node.js/npm from Debian if missing; `npm ci && npm run build` in
# console/ when its sources changed). With --with-browser (scripts/test.sh) also Debian's
# chromium and chromium-driver for the console's end-to-end tests, and libfaketime for the
# fault suite's wall-clock steps.
# Idempotent, and quick when everything is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.emon-install-stamp"
CONSOLE_SRC=console
CONSOLE_OUT=daemon/console/static
CONSOLE_DEPS_STAMP="$CONSOLE_SRC/node_modules/.emon-deps-stamp"
CONSOLE_BUILD_STAMP="$CONSOLE_OUT/.emon-build-stamp"
NODE_MIN_MAJOR=18  # Debian bookworm's nodejs; console/package.json's engines

WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-browser) WITH_BROWSER=1 ;;
        *) printf 'bootstrap: unknown argument %s\n' "$arg" >&2; exit 2 ;;
    esac
done

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

have_node() {
    command -v node >/dev/null 2>&1 \
        && node -e "process.exit(+process.versions.node.split('.')[0] >= $NODE_MIN_MAJOR ? 0 : 1)" \
            >/dev/null 2>&1
}

have_npm() { command -v npm >/dev/null 2>&1; }

# libfaketime: the fault suite steps the daemon's wall clock with it (tests/test_faults_clock.py).
have_faketime() { compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; }

# Debian's packages, never a download of their own: chromedriver matches chromium's version.
have_browser() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

install_system_packages() {
    local missing=()
    have_mosquitto || missing+=(mosquitto)
    have_postgres || missing+=(postgresql)
    have_node || missing+=(nodejs)
    # A Node.js from elsewhere (e.g. NodeSource) brings its own npm; Debian's is separate.
    have_npm || missing+=(npm)
    if [ "$WITH_BROWSER" -eq 1 ] && ! have_faketime; then missing+=(libfaketime); fi
    if [ "$WITH_BROWSER" -eq 1 ] && ! have_browser; then missing+=(chromium chromium-driver); fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && have_postgres; then
        # PostgreSQL refuses to run as root; localservices runs it as this user, which
        # Debian's postgresql-common creates.
        missing+=(postgresql-common)
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        log "mosquitto, PostgreSQL server, Node.js$([ "$WITH_BROWSER" -eq 1 ] && echo ", chromium"): present"
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
    have_node || { log "Node.js >= $NODE_MIN_MAJOR still missing after apt-get install"; exit 1; }
    have_npm || { log "npm still missing after apt-get install"; exit 1; }
    if [ "$WITH_BROWSER" -eq 1 ] && ! have_faketime; then
        log "libfaketime still missing after apt-get install"
        exit 1
    fi
    if [ "$WITH_BROWSER" -eq 1 ] && ! have_browser; then
        log "chromium or chromium-driver still missing after apt-get install"
        exit 1
    fi
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

# A digest of the named files and their contents.
digest_of() {
    find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

build_console() {
    local deps sources
    deps="$(digest_of "$CONSOLE_SRC/package.json" "$CONSOLE_SRC/package-lock.json")"
    if [ "$(cat "$CONSOLE_DEPS_STAMP" 2>/dev/null || true)" != "$deps" ]; then
        log "console: npm ci (the versions pinned in $CONSOLE_SRC/package-lock.json)"
        (cd "$CONSOLE_SRC" && npm ci --no-audit --no-fund >&2)
        printf '%s\n' "$deps" >"$CONSOLE_DEPS_STAMP"
    fi
    sources="$(digest_of "$CONSOLE_SRC/package.json" "$CONSOLE_SRC/package-lock.json" \
        "$CONSOLE_SRC/build.mjs" "$CONSOLE_SRC/tsconfig.json" "$CONSOLE_SRC/src")"
    if [ -f "$CONSOLE_OUT/index.html" ] \
        && [ "$(cat "$CONSOLE_BUILD_STAMP" 2>/dev/null || true)" = "$sources" ]; then
        log "console: up to date"
        return 0
    fi
    log "console: npm run build (type check, bundle into $CONSOLE_OUT)"
    (cd "$CONSOLE_SRC" && npm run build >&2)
    printf '%s\n' "$sources" >"$CONSOLE_BUILD_STAMP"
}

install_system_packages
create_venv
install_project
build_console
log "ready"
