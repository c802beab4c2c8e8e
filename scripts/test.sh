#!/usr/bin/env bash
# The test command: installs what the tests need (when missing), then lint, types, tests.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k registry  # extra arguments go to pytest
# Works on a fresh Debian machine as root or with sudo. The tests start their own
# PostgreSQL and Mosquitto on free ports; the system services are neither needed nor started.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
    printf '\n==> %s\n' "$*"
}

have_postgres() {
    local bindir
    if command -v pg_config >/dev/null 2>&1; then
        bindir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$bindir" && -x "$bindir/initdb" && -x "$bindir/pg_ctl" ]]; then
            return 0
        fi
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

have_mosquitto() {
    { command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; } &&
        command -v mosquitto_sub >/dev/null 2>&1
}

section "system packages"
missing=()
have_postgres || missing+=(postgresql)
have_mosquitto || missing+=(mosquitto mosquitto-clients)
if ((${#missing[@]} == 0)); then
    echo "postgresql and mosquitto already installed"
else
    echo "installing: ${missing[*]}"
    if [[ "$(id -u)" -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "error: ${missing[*]} missing, and neither root nor sudo to install them" >&2
        exit 1
    fi
    "${as_root[@]}" apt-get update -qq -o Acquire::Retries=3
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq -o Acquire::Retries=3 \
        "${missing[@]}"
    have_postgres || { echo "error: PostgreSQL binaries still missing" >&2; exit 1; }
    have_mosquitto || { echo "error: mosquitto still missing" >&2; exit 1; }
fi

section "python packages"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'

section "ruff check"
python3 -m ruff check .

section "ruff format --check"
python3 -m ruff format --check .

section "mypy"
python3 -m mypy

section "pytest"
# pytest exits 5 when it collected no tests: that is a failure here too (set -e)
python3 -m pytest -q "$@"
