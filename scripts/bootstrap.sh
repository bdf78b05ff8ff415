#!/usr/bin/env bash
# Creates or refreshes a Python environment with everything the project needs.
# Idempotent: when pyproject.toml and the interpreter are unchanged, it costs about a second.
# Usage: scripts/bootstrap.sh [--pro] [--system-packages]
#   (default)          .venv: Python 3.10, Rasa Open Source 3.6.21 (the `bot` extra) and the
#                      project with its test, lint and bench tools. PYTHON chooses the interpreter.
#   --pro              .venv-pro: Python 3.11, the newest rasa-pro 3.x with its `channels` extra,
#                      and the project with its test tools, for the second test run of
#                      `make test`. PYTHON311 chooses the interpreter, VENV_PRO the folder.
#   --system-packages  also install the Debian packages the tests use
#                      (redis-server, chromium, chromium-driver, and nginx and postgresql
#                      for the cluster tests) where apt-get is available as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LINE=oss
SYSTEM_PACKAGES=no
for arg in "$@"; do
    case "$arg" in
        --pro) LINE=pro ;;
        --system-packages) SYSTEM_PACKAGES=yes ;;
        *) printf '[bootstrap] unknown option %s (use --pro, --system-packages)\n' "$arg" >&2; exit 2 ;;
    esac
done

if [ "$LINE" = pro ]; then
    WANT_PY=3.11
    CHOSEN="${PYTHON311:-}"
    CHOSEN_NAME=PYTHON311
    VENV="${VENV_PRO:-$ROOT/.venv-pro}"
    # rasa-pro and rasa both install the package `rasa`: this environment has only rasa-pro.
    # The `channels` extra brings the client libraries of Rasa's channels (aiogram 3,
    # fbmessenger, slack_sdk, twilio), which rasa-pro leaves out by default; the channel
    # tests run Rasa's own output channels with them.
    REQUIREMENTS=("rasa-pro[channels]>=3.21,<4" "-e" "$ROOT[test]")
    # Rasa Pro imports litellm, which would fetch its model price list over the network.
    export LITELLM_LOCAL_MODEL_COST_MAP=True
else
    WANT_PY=3.10
    CHOSEN="${PYTHON:-}"
    CHOSEN_NAME=PYTHON
    VENV="${VENV:-$ROOT/.venv}"
    REQUIREMENTS=("-e" "$ROOT[bot,test,lint,bench]")
fi

say() { printf '[bootstrap] %s\n' "$*" >&2; }

is_wanted_py() {
    [ -n "$1" ] && "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$WANT_PY' else 1)" >/dev/null 2>&1
}

find_python() {
    local candidates=()
    [ -n "$CHOSEN" ] && candidates+=("$CHOSEN")
    candidates+=("python$WANT_PY")
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then
        pyenv_root="$(pyenv root 2>/dev/null || echo "$pyenv_root")"
    fi
    local dir
    for dir in "$pyenv_root"/versions/"$WANT_PY"*; do
        [ -x "$dir/bin/python$WANT_PY" ] && candidates+=("$dir/bin/python$WANT_PY")
    done
    candidates+=("/usr/bin/python$WANT_PY" "/usr/local/bin/python$WANT_PY" python3)
    local c
    for c in "${candidates[@]}"; do
        if is_wanted_py "$c"; then
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
    if [ "$LINE" = pro ]; then
        say "Python 3.11 not found. The Rasa Pro test environment (.venv-pro) needs it."
        say "Install it (e.g. 'pyenv install 3.11.7' or 'apt-get install python3.11 python3.11-venv'),"
        say "or point PYTHON311 at a 3.11 interpreter: PYTHON311=/path/to/python3.11 make test"
    else
        say "Python 3.10 not found. Rasa 3.6 needs Python 3.8-3.10; this project uses 3.10."
        say "Install it (e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv'),"
        say "or point PYTHON at a 3.10 interpreter: PYTHON=/path/to/python3.10 make test"
    fi
    exit 2
}

if [ "$SYSTEM_PACKAGES" = yes ]; then
    install_system_packages
fi

if [ -x "$VENV/bin/python" ] && ! is_wanted_py "$VENV/bin/python"; then
    say "$VENV is not a Python $WANT_PY environment; recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.installed"
WANT="$( (cat "$ROOT/pyproject.toml"; echo "${REQUIREMENTS[*]}"; "$VENV/bin/python" -VV) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    say "installing the project and its dependencies into $VENV (first time: a few minutes)"
    LOG="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade "pip>=23" wheel &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check "${REQUIREMENTS[@]}"; } >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        say "installing failed; the whole log is in $LOG"
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
