#!/usr/bin/env bash
# Creates or refreshes .venv with Python 3.10 and everything the project needs.
# Idempotent: when pyproject.toml and the interpreter are unchanged, it costs about a second.
# Usage: scripts/bootstrap.sh [--system-packages]
#   --system-packages  also install the Debian packages the tests use (redis-server,
#                      chromium, chromium-driver, and nginx and postgresql for the
#                      cluster tests) where apt-get is available as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
EXTRAS="test,lint,bench"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

is_py310() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

find_python() {
    local candidates=()
    [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
    candidates+=(python3.10)
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then
        pyenv_root="$(pyenv root 2>/dev/null || echo "$pyenv_root")"
    fi
    local dir
    for dir in "$pyenv_root"/versions/3.10*; do
        [ -x "$dir/bin/python3.10" ] && candidates+=("$dir/bin/python3.10")
    done
    candidates+=(/usr/bin/python3.10 /usr/local/bin/python3.10 python3)
    local c
    for c in "${candidates[@]}"; do
        if is_py310 "$c"; then
            command -v "$c" 2>/dev/null || echo "$c"
            return 0
        fi
    done
    return 1
}

install_system_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # Debian keeps initdb and postgres off PATH, under /usr/lib/postgresql/<version>/bin.
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 ||
        missing+=(postgresql)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "cannot install ${missing[*]} here (needs apt-get as root);"
        say "install them yourself, or the tests that need them will skip (and fail under CI=true)."
    fi
}

PY="$(find_python)" || {
    say "Python 3.10 not found. Rasa 3.6 needs Python 3.8-3.10; this project uses 3.10."
    say "Install it (e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv'),"
    say "or point PYTHON at a 3.10 interpreter: PYTHON=/path/to/python3.10 make test"
    exit 2
}

if [ "${1:-}" = "--system-packages" ]; then
    install_system_packages
fi

if [ -x "$VENV/bin/python" ] && ! is_py310 "$VENV/bin/python"; then
    say "$VENV is not a Python 3.10 environment; recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.installed"
WANT="$( (cat "$ROOT/pyproject.toml"; echo "$EXTRAS"; "$VENV/bin/python" -VV) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    say "installing the project and its dependencies into $VENV (first time: a few minutes)"
    LOG="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade "pip>=23" wheel &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[$EXTRAS]"; } >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        say "installing failed; the whole log is in $LOG"
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
